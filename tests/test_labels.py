"maskkit.labels is the one home of the class arithmetic: its functions on every kind of input, and no copy elsewhere."
import io, re, tokenize
from pathlib import Path
import numpy as np, pytest, torch
import maskkit
from maskkit.labels import (NUM_CLASSES, PARTS, PROB_COLS, as_hw, class_names, decode_label, encode_label, joint_from_parts,
                            label_parts, part_marginals, pil_size)

PKG = Path(maskkit.__file__).parent


def test_encode_decode_round_trip_on_ints_arrays_and_tensors():
    c = np.arange(NUM_CLASSES)
    m, g, a = decode_label(c)
    assert (encode_label(m, g, a) == c).all() and encode_label(2, 1, 2) == 17 and decode_label(7) == (1, 0, 1)
    tm, tg, ta = decode_label(torch.arange(NUM_CLASSES))
    assert torch.equal(encode_label(tm, tg, ta), torch.arange(NUM_CLASSES)) and torch.equal(tm, torch.as_tensor(m))


def test_marginals_and_joint_agree():
    P = np.random.default_rng(0).dirichlet(np.ones(NUM_CLASSES), 7)
    parts = part_marginals(P)
    assert [v.shape[1] for v in parts.values()] == list(PARTS.values())
    m, g, a = decode_label(np.arange(NUM_CLASSES))
    for k, lab in zip(PARTS, (m, g, a)):
        for v in range(PARTS[k]): assert np.allclose(parts[k][:, v], P[:, lab == v].sum(1))
    J = joint_from_parts(*parts.values())
    assert np.allclose(J.sum(1), 1) and np.allclose(part_marginals(J)["mask"], parts["mask"])
    t = part_marginals(torch.tensor(P))
    assert torch.allclose(t["age_bin"], torch.tensor(parts["age_bin"]))


def test_names_and_sizes():
    assert class_names()[encode_label(1, 1, 2)] == "incorrect/female/>=60" and len(PROB_COLS) == NUM_CLASSES
    assert list(label_parts([17])["gender"]) == ["female"]
    assert as_hw(64) == (64, 64) and as_hw((96, 64)) == (96, 64) and pil_size((96, 64)) == (64, 96)
    with pytest.raises(ValueError): as_hw((0, 5))


def _code_tokens(path):
    return [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            if t.type not in (tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE)]


@pytest.mark.parametrize("module", sorted(p.name for p in PKG.glob("*.py") if p.name not in ("labels.py", "_modidx.py")))
def test_no_class_arithmetic_outside_labels(module):
    "No `18`, `* 6`, `// 6`, `// 3` or `reshape(.., 3, 2, 3)` in the code of any other module (strings and comments aside)."
    toks = _code_tokens(PKG / module)
    lines = (PKG / module).read_text().splitlines()
    not_classes = ("AGE_BANDS = ", "_HAIRS = ")   # demo.py: drawn ages and hair colours, not class ids
    bad = []
    for i, t in enumerate(toks):
        if t.type == tokenize.NUMBER and t.string == "18": bad.append((t.start[0], "18"))
        if t.type == tokenize.OP and t.string in ("*", "//") and i + 1 < len(toks) and toks[i + 1].string in ("6", "3") \
                and not (i > 0 and toks[i - 1].type == tokenize.NUMBER):
            bad.append((t.start[0], f"{t.string} {toks[i + 1].string}"))
        if t.string == "3" and i + 4 < len(toks) and [x.string for x in toks[i:i + 5]] == ["3", ",", "2", ",", "3"]:
            bad.append((t.start[0], "3, 2, 3"))
    bad = [b for b in bad if not lines[b[0] - 1].lstrip().startswith(not_classes)]
    assert not bad, bad
