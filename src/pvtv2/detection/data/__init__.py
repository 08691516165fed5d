"""Detection data: annotations read and checked (:mod:`.annotations`), the torch Dataset (:mod:`.dataset`),
the released multi-scale + crop augmentation (:mod:`.augment`).
"""
