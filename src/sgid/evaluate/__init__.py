"""``sgid evaluate``: does an augmentation help a classifier? (SGID paper §4, appendix I)."""
