"""Reports and widgets for notebooks: results in; tables, figures and interactive controls out.

Tidy DataFrames (``tables``), matplotlib figures (``plots``), the fallback-loop widget
(``widgets``) and the Netron model viewer (``viewer``).
"""
