"""The views layer: a tidy DataFrame in, a Plotly figure out (``figures``, ``sweeps``, ``lecture``). pandas and
plotly only: no torch, no Streamlit, no data fetching."""
