"""Necks on the backbone: the FPN (:mod:`.fpn`).
"""
