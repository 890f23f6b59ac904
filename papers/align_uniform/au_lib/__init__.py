"""MoCo with the Alignment and Uniformity losses (Wang & Isola, ICML 2020): builder, loss terms, CLI."""
