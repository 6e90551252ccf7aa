"""The dashboard: ``streamlit run app.py``. Page config and navigation; the pages live in app_pages/.

Not ``pages/``: Streamlit treats a ``pages/`` folder beside the entry script as a legacy multipage app until the
process first calls ``st.navigation``, so on a fresh server a first visit to /runs would run that page alone.
"""

import streamlit as st

from balance import ui

st.set_page_config(
    page_title="balance: layers balance under gradient descent", page_icon=":material/balance:", layout="wide"
)
ui.navigation().run()
