from ftcompare.data.corpus import is_held_out, read_text, stdlib_corpus


def test_held_out_files_are_a_fixed_disjoint_tenth():
    corpus = stdlib_corpus()
    assert corpus.train_files and corpus.held_out_files
    assert not set(corpus.train_files) & set(corpus.held_out_files)
    assert 0.04 < len(corpus.held_out_files) / (len(corpus.train_files) + len(corpus.held_out_files)) < 0.2
    assert all(is_held_out(p.relative_to(corpus.root).as_posix()) for p in corpus.held_out_files)
    assert stdlib_corpus() == corpus
    assert not any("test" in p.relative_to(corpus.root).parts for p in corpus.train_files)


def test_read_text_stops_at_max_chars():
    corpus = stdlib_corpus()
    assert len(read_text(corpus.held_out_files, max_chars=1000)) == 1000
