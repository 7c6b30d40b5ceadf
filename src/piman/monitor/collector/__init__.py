"""The collector: scrape agents (``scrape``, ``fetch``, ``expfmt``), keep samples in the embedded
time-series store (``tsdb``, ``tsdb_tables``), read them back (``query``), and the per-node
snapshot the UI shows (``snapshot``)."""
