"""Alerting: rules (``rules``), the pure alert book (``book``), silences, the evaluator service
(``evaluator``), notification channels and their outbox worker (``notify``), and what the
manager builds (``service``)."""
