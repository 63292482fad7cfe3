"""The owners' dashboard: server-rendered pages of the reports, live, in Russian and English.

``pages`` the pages · ``signin`` signing in and out · ``views`` what a page shows,
read from the rollups · ``i18n`` languages, words, and Babel's formats ·
``sessions`` a signed-in owner's session (a random token in a cookie, stored
hashed) · ``assets`` static files under content-hashed names ·
``templates/`` Jinja2 · ``static/`` the stylesheet and the script.
"""
