"""Data helpers: a synthetic ADE20K-layout generator for demos and tests (``ade20k_demo``)."""
