"""The Sweeps page's widgets and layout (scaffold: being built)."""

import streamlit as st


def page(prefix: str) -> None:
    st.info("Sweeps: being built.")
