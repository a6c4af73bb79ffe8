"""Speed benchmarks of sibeatgan (`sibeatgan bench`, `sibeatgan bench-step`): training and
scoring speed against a step written the way the original code trains, and which oneDNN kernels
a step ran. Kept out of the core package: only `sibeatgan.cli` imports it, and only when a bench
command runs."""
