"""piman's one C extension, the lock-step data path of the TFTP server; the rest of the project
is described in pyproject.toml.

The extension is optional: where no C compiler (or no Python headers) is found, piman installs
without it and the pure-Python data path serves alone (see piman.netboot.tftp.pump).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "piman.netboot.tftp._lanes",
            ["src/piman/netboot/tftp/_lanes.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
