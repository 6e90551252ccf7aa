"""The dashboard: ``streamlit run app.py``. Page config and navigation; the pages live in app_pages/.

The page icon is an emoji, which Streamlit draws as an inline SVG: a ``:material/...:`` icon would be fetched from
fonts.gstatic.com, and the dashboard must work with no network at all.

Not ``pages/``: Streamlit treats a ``pages/`` folder beside the entry script as a legacy multipage app until the
process first calls ``st.navigation``, so on a fresh server a first visit to /runs would run that page alone.
"""

import streamlit as st

from balance.app import common as ui

st.set_page_config(page_title="balance: layers balance under gradient descent", page_icon="⚖️", layout="wide")
ui.navigation().run()
