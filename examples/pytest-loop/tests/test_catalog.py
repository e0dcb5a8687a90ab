def test_lookup(catalog):
    assert catalog["item-42"].startswith("73475cb4")


def test_size(catalog):
    assert len(catalog) == 1_000_000
