from benchmarks.__main__ import main, names


def test_listing_names_every_benchmark(capsys):
    main([])
    out = capsys.readouterr().out
    assert set(names()) >= {"bakeoff", "conv", "flash", "hyena"}
    for name in names():
        assert f"  {name} " in out
