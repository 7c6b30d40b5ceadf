"""Simulator: virtual PoE switches and virtual Pis for `piman demo`, tests and benchmarks."""
