"""The runs layer: the one loop that drives an engine (``loop``), the worker processes that run it in the
background (``executor``, ``worker``), and what keeps runs (``store``, ``archive``, ``reuse``), plus sweeps,
limits and uploads. Streamlit is never imported here; torch only where a run trains."""
