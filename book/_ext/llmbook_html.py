"""Sphinx extension: a page of the HTML edition loads each of its scripts once.

With Jupyter Book 1.x on Sphinx 7.4, an inline script that an extension registers after the
builder has started (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's
settings) is written into every page twice: once from Sphinx's registry (file name ``''``) and
once from the builder's own list (file name ``None``), which Sphinx does not see as the same
script. Declaring a ``const`` twice is an error in the browser ("Identifier 'THEBE_JS_URL' has
already been declared"), so each page's scripts are made unique before the page is written.
``tests/html/check_html.py`` fails on any console error, this one included.

pydata-sphinx-theme 0.17 gives every page a header bar that holds only a second search field
(sphinx-book-theme has one in its sidebar) unless ``navbar_persistent`` is set; setting it in
``_config.yml`` would replace the theme options Jupyter Book derives from its ``html:`` section,
so it is set here, before the theme reads its options.

It also loads ``book/_static/llmbook-offline.js``, which keeps the search page from fetching
result pages when the book is opened from the disk (browsers refuse ``fetch`` on ``file://``).
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    """Two script entries are the same script when file and attributes (the body too) agree."""
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def unique_scripts(scripts: list) -> list:
    """The scripts in their order, each once (the first occurrence is kept)."""
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    return unique


def _on_page_context(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(list(context["script_files"]))


def _no_header_bar(app, config) -> None:
    config.html_theme_options.setdefault("navbar_persistent", [])


def setup(app):
    app.connect("config-inited", _no_header_bar)
    # after documentation_options.js (priority 200), whose settings it adjusts
    app.add_js_file("llmbook-offline.js", priority=300)
    # after every other handler, which may still add scripts to the page
    app.connect("html-page-context", _on_page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
