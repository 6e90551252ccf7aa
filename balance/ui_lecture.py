"""The Lecture page's widgets and layout (scaffold: being built)."""

import streamlit as st


def page(prefix: str) -> None:
    st.info("Lecture: being built.")
