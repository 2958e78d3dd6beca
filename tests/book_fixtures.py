"""Text shared by the tests that build small books and notebooks of their own."""

# the Jupytext front matter a MyST chapter needs to be read as a notebook
MYST_FRONT_MATTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  name: python3
  display_name: Python 3
  language: python
---
"""
