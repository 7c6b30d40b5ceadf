"""Monitoring: the node agent (``agent``, runs on the Pis), the ``collector`` and ``alerting`` on
the manager, interop files for Prometheus and Grafana (``export``), and what the manager builds
(``service``)."""
