"""Proposal generators: the two region proposal networks (:mod:`.rpn`).
"""
