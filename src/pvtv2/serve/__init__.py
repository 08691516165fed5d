"""``pvtv2 serve``: a local web page to try the classifier, detector, segmentor and attention maps (offline).

- :mod:`.models`: what is served: each panel's model, loaded once, and one function per panel (classify, detect,
  segment, attention) returning JSON-able results with the time of the call;
- :mod:`.app`: the standard library's HTTP server, its routes and upload checks; ``page.html`` / ``page.js`` /
  ``page.css``: the page (vanilla JavaScript, no external asset).

Only :mod:`pvtv2.cli` imports this package.
"""
