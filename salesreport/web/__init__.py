"""The owners' dashboard: server-rendered pages of the reports, live, in Russian and English.

``pages`` the routes · ``views`` what a page shows, read from the rollups ·
``i18n`` languages, words, and Babel's formats · ``sessions`` the signed cookie
of a signed-in owner · ``assets`` static files under content-hashed names ·
``templates/`` Jinja2 · ``static/`` the stylesheet and the script.
"""
