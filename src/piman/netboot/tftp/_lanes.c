/*
 * piman.netboot.tftp._lanes: the lock-step hot path of the TFTP transfer pump, in C.
 *
 * A *lane* is a run of lock-step turns of one transfer, prepared by the Python session
 * (TftpSession.lockstep_plan): the block whose ACK the first turn expects, and the DATA
 * datagram that answers each ACK in turn. Lanes.run() waits on the pump's epoll set with the
 * GIL released and, for every socket with a lane, reads the client's datagram; when it is the
 * expected ACK (exactly four bytes: 0 4 and the block number), it sends the next DATA datagram
 * and moves on. Everything else goes back to Python, which owns the protocol:
 *
 *   (fd, EXHAUSTED, None)  the lane's last DATA went out: its turns are done, plan more;
 *   (fd, DATAGRAM, bytes)  a datagram that is not the expected ACK (a duplicate ACK, an
 *                          ERROR, junk): the lane has not moved, the session decides;
 *   (fd, FAILED, errno)    recv or send failed (ICMP port unreachable: the client is gone);
 *   (fd, READY, None)      a ready socket with no lane (the wake-up socket, a windowed
 *                          transfer, an OACK awaiting ACK 0): Python reads it itself.
 *
 * run() returns after the first batch of events that produced a result, or when `timeout`
 * seconds have passed with none (the pump's next timer). Before it sleeps, a wait may spin
 * (piman.netboot.tftp.busypoll decides how long): epoll_wait without blocking, sched_yield
 * between; run() reports how many spins ended with a datagram and whether one ended without,
 * for that policy to count. Python records the turns done with take()
 * (TftpSession.lockstep_advance) whenever it touches the transfer, and before its timer.
 * A send that fails with EAGAIN/ENOBUFS counts as done: the datagram is lost, and the
 * session's retransmit timer resends it, as in the Python path.
 *
 * One thread only: set/take/drop must not run while another thread is inside run().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

enum { EXHAUSTED = 0, DATAGRAM = 1, FAILED = 2, READY = 3 };

typedef struct {
    PyObject **datagrams; /* owned references; NULL: no lane on this fd */
    Py_ssize_t count;     /* turns in the lane */
    Py_ssize_t pos;       /* turns done */
    Py_ssize_t taken;     /* turns already reported by take() */
    unsigned int first;   /* block number the first turn's ACK carries (mod 65536) */
} Lane;

typedef struct {
    int fd;
    int kind;
    int err;
    Py_ssize_t len;
    char data[512];
} Result;

typedef struct {
    PyObject_HEAD
    Lane *lanes; /* indexed by fd */
    Py_ssize_t size;
    struct epoll_event *events;
    Result *results;
    int max_events;
    int read_size;
    int running;
} LanesObject;

static void
lane_clear(Lane *lane)
{
    if (lane->datagrams != NULL) {
        for (Py_ssize_t i = 0; i < lane->count; i++) {
            Py_DECREF(lane->datagrams[i]);
        }
        PyMem_Free(lane->datagrams);
    }
    lane->datagrams = NULL;
    lane->count = lane->pos = lane->taken = 0;
    lane->first = 0;
}

static Lane *
lane_at(LanesObject *self, int fd)
{
    if (fd < 0 || fd >= self->size) {
        return NULL;
    }
    return &self->lanes[fd];
}

static int
as_fd(PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)fd;
}

static int
check_idle(LanesObject *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "Lanes used from another thread during run()");
        return -1;
    }
    return 0;
}

static int
Lanes_init(LanesObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"read_size", "max_events", NULL};
    int read_size = 479, max_events = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$ii", kwlist, &read_size, &max_events)) {
        return -1;
    }
    if (read_size < 4 || read_size > (int)sizeof(((Result *)0)->data)) {
        PyErr_Format(PyExc_ValueError, "read_size must be 4 to %d",
                     (int)sizeof(((Result *)0)->data));
        return -1;
    }
    if (max_events < 1 || max_events > 65536) {
        PyErr_SetString(PyExc_ValueError, "max_events must be 1 to 65536");
        return -1;
    }
    PyMem_Free(self->events);
    PyMem_Free(self->results);
    self->events = PyMem_Calloc((size_t)max_events, sizeof(struct epoll_event));
    self->results = PyMem_Calloc((size_t)max_events, sizeof(Result));
    if (self->events == NULL || self->results == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->max_events = max_events;
    self->read_size = read_size;
    return 0;
}

static void
Lanes_dealloc(LanesObject *self)
{
    for (Py_ssize_t fd = 0; fd < self->size; fd++) {
        lane_clear(&self->lanes[fd]);
    }
    PyMem_Free(self->lanes);
    PyMem_Free(self->events);
    PyMem_Free(self->results);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(set_doc,
"set(fd, first, datagrams)\n--\n\n"
"Give transfer socket ``fd`` a lane: the ACK of block ``first`` (mod 65536) is answered with\n"
"``datagrams[0]``, the ACK of the next block with ``datagrams[1]`` and so on. The turns done\n"
"on the lane it replaces must have been taken.");

static PyObject *
Lanes_set(LanesObject *self, PyObject *args)
{
    int fd;
    unsigned int first;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iIO:set", &fd, &first, &seq) || check_idle(self) < 0) {
        return NULL;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "negative file descriptor");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "datagrams must be a sequence of bytes");
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(items[i])) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "datagrams must be bytes");
            return NULL;
        }
    }
    if (fd >= self->size) {
        Py_ssize_t size = self->size ? self->size : 64;
        while (size <= fd) {
            size *= 2;
        }
        Lane *lanes = PyMem_Realloc(self->lanes, (size_t)size * sizeof(Lane));
        if (lanes == NULL) {
            Py_DECREF(fast);
            return PyErr_NoMemory();
        }
        memset(lanes + self->size, 0, (size_t)(size - self->size) * sizeof(Lane));
        self->lanes = lanes;
        self->size = size;
    }
    Lane *lane = &self->lanes[fd];
    if (lane->pos != lane->taken) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_RuntimeError, "lane of fd %d has %zd turns not taken", fd,
                     lane->pos - lane->taken);
        return NULL;
    }
    PyObject **datagrams = NULL;
    if (count > 0) {
        datagrams = PyMem_Malloc((size_t)count * sizeof(PyObject *));
        if (datagrams == NULL) {
            Py_DECREF(fast);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            datagrams[i] = Py_NewRef(items[i]);
        }
    }
    Py_DECREF(fast);
    lane_clear(lane);
    lane->datagrams = datagrams;
    lane->count = count;
    lane->first = first & 0xffff;
    Py_RETURN_NONE;
}

/* The turns done on fd's lane since the last take; with `clear`, the lane goes too. */
static PyObject *
take_turns(LanesObject *self, PyObject *arg, int clear)
{
    int fd = as_fd(arg);
    if (fd < 0 || check_idle(self) < 0) {
        return NULL;
    }
    Lane *lane = lane_at(self, fd);
    if (lane == NULL) {
        return PyLong_FromLong(0);
    }
    Py_ssize_t done = lane->pos - lane->taken;
    lane->taken = lane->pos;
    if (clear) {
        lane_clear(lane);
    }
    return PyLong_FromSsize_t(done);
}

PyDoc_STRVAR(take_doc,
"take(fd) -> int\n--\n\n"
"The turns done on ``fd``'s lane since the last take (0 without a lane).");

static PyObject *
Lanes_take(LanesObject *self, PyObject *arg)
{
    return take_turns(self, arg, 0);
}

PyDoc_STRVAR(drop_doc,
"drop(fd) -> int\n--\n\n"
"Remove ``fd``'s lane; returns the turns done on it that were not taken.");

static PyObject *
Lanes_drop(LanesObject *self, PyObject *arg)
{
    return take_turns(self, arg, 1);
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Serve one ready socket with a lane; returns 1 and fills *result when Python is needed. */
static int
serve(LanesObject *self, Lane *lane, int fd, Result *result)
{
    if (lane->pos >= lane->count) {
        result->kind = EXHAUSTED; /* not read: the next lane (or Python) takes it */
        return 1;
    }
    ssize_t n = recv(fd, result->data, (size_t)self->read_size, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return 0;
        }
        result->kind = FAILED;
        result->err = errno;
        return 1;
    }
    unsigned int block = (lane->first + (unsigned int)lane->pos) & 0xffff;
    const unsigned char *d = (const unsigned char *)result->data;
    if (n != 4 || d[0] != 0 || d[1] != 4 || d[2] != (block >> 8) || d[3] != (block & 0xff)) {
        result->kind = DATAGRAM;
        result->len = n;
        return 1;
    }
    PyObject *datagram = lane->datagrams[lane->pos];
    lane->pos++;
    if (send(fd, PyBytes_AS_STRING(datagram), (size_t)PyBytes_GET_SIZE(datagram), MSG_DONTWAIT) < 0
        && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != EINTR) {
        result->kind = FAILED;
        result->err = errno;
        return 1;
    }
    if (lane->pos >= lane->count) {
        result->kind = EXHAUSTED;
        return 1;
    }
    return 0;
}

PyDoc_STRVAR(run_doc,
"run(epfd, timeout, spin) -> tuple[list[tuple[int, int, object]], int, bool]\n--\n\n"
"Serve the lanes of the sockets in epoll set ``epfd`` until something needs Python, or for\n"
"``timeout`` seconds at most. Returns (fd, kind, value) for each such thing (see the module),\n"
"the number of waits that a spin of at most ``spin`` seconds ended (polling without\n"
"blocking, the CPU given away between polls), and whether one spin ended empty: then the\n"
"wait slept, and run() returns after what that brought.");

static int
wait_events(LanesObject *self, int epfd, double until, double spin, int *hits, int *missed)
{
    int ready = epoll_wait(epfd, self->events, self->max_events, 0);
    if (ready != 0) {
        return ready;
    }
    double now = monotonic();
    if (now >= until) {
        return 0;
    }
    if (spin > 0.0) {
        double spin_until = now + spin < until ? now + spin : until;
        do {
            sched_yield(); /* a client on this CPU runs now, not at our next sleep */
            ready = epoll_wait(epfd, self->events, self->max_events, 0);
        } while (ready == 0 && monotonic() < spin_until);
        if (ready != 0) {
            *hits += ready > 0;
            return ready;
        }
        *missed = 1;
    }
    double left = until - monotonic();
    int wait_ms = left <= 0.0 ? 0 : (int)(left * 1000.0 + 0.999);
    return epoll_wait(epfd, self->events, self->max_events, wait_ms);
}

static PyObject *
Lanes_run(LanesObject *self, PyObject *args)
{
    int epfd;
    double timeout, spin = 0.0;
    if (!PyArg_ParseTuple(args, "id|d:run", &epfd, &timeout, &spin) || check_idle(self) < 0) {
        return NULL;
    }
    int found = 0, failure = 0, hits = 0, missed = 0;
    self->running = 1;
    Py_BEGIN_ALLOW_THREADS
    double until = monotonic() + (timeout > 0.0 ? timeout : 0.0);
    for (;;) {
        int ready = wait_events(self, epfd, until, spin, &hits, &missed);
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            failure = errno;
            break;
        }
        for (int i = 0; i < ready; i++) {
            int fd = self->events[i].data.fd;
            Result *result = &self->results[found];
            Lane *lane = lane_at(self, fd);
            if (lane == NULL || lane->datagrams == NULL) {
                result->kind = READY;
            } else if (!serve(self, lane, fd, result)) {
                continue;
            }
            result->fd = fd;
            found++;
        }
        if (found || missed || monotonic() >= until) {
            break;
        }
    }
    Py_END_ALLOW_THREADS
    self->running = 0;
    if (failure) {
        errno = failure;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *list = PyList_New(found);
    if (list == NULL) {
        return NULL;
    }
    for (int i = 0; i < found; i++) {
        Result *r = &self->results[i];
        PyObject *value;
        if (r->kind == DATAGRAM) {
            value = PyBytes_FromStringAndSize(r->data, r->len);
        } else if (r->kind == FAILED) {
            value = PyLong_FromLong(r->err);
        } else {
            value = Py_NewRef(Py_None);
        }
        PyObject *item = value == NULL ? NULL : Py_BuildValue("(iiN)", r->fd, r->kind, value);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return Py_BuildValue("(NiO)", list, hits, missed ? Py_True : Py_False);
}

static PyMethodDef Lanes_methods[] = {
    {"set", (PyCFunction)Lanes_set, METH_VARARGS, set_doc},
    {"take", (PyCFunction)Lanes_take, METH_O, take_doc},
    {"drop", (PyCFunction)Lanes_drop, METH_O, drop_doc},
    {"run", (PyCFunction)Lanes_run, METH_VARARGS, run_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Lanes_doc,
"Lanes(*, read_size=479, max_events=256)\n--\n\n"
"Lock-step lanes of the transfers in one epoll set; see the module.");

static PyTypeObject LanesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "piman.netboot.tftp._lanes.Lanes",
    .tp_basicsize = sizeof(LanesObject),
    .tp_dealloc = (destructor)Lanes_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Lanes_doc,
    .tp_methods = Lanes_methods,
    .tp_init = (initproc)Lanes_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef lanes_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "piman.netboot.tftp._lanes",
    .m_doc = "The lock-step hot path of the TFTP transfer pump (see piman.netboot.tftp.pump).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__lanes(void)
{
    if (PyType_Ready(&LanesType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&lanes_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Lanes", (PyObject *)&LanesType) < 0
        || PyModule_AddIntConstant(module, "EXHAUSTED", EXHAUSTED) < 0
        || PyModule_AddIntConstant(module, "DATAGRAM", DATAGRAM) < 0
        || PyModule_AddIntConstant(module, "FAILED", FAILED) < 0
        || PyModule_AddIntConstant(module, "READY", READY) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
