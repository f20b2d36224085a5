"""``sgid review``: look at runs in the browser, select images, and run the paper's blinded rating study.

Modules: :mod:`~sgid.review.db` (SQLite state), :mod:`~sgid.review.catalog` (the runs' images, grouped by
original), :mod:`~sgid.review.selection` (what clicks mean; shared with ``sgid filter --filters human``),
:mod:`~sgid.review.thumbs` (cached thumbnails), :mod:`~sgid.review.study` (sampling, export, agreement),
:mod:`~sgid.review.security` (host, token, CSRF, headers), :mod:`~sgid.review.app` (the Starlette app) and
:mod:`~sgid.review.server` (binding and running it). The web parts need ``pip install 'sgid[review]'``.
"""
