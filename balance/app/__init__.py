"""The dashboard: the only package that imports Streamlit. ``common`` holds what every page shares; one module
per page (``explore`` with ``sidebar``, ``links`` and ``live``; ``runs``, ``sweeps``, ``claims``, ``lecture``)."""
