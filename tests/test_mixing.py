"Mixing invariants of the chain's training sets, for any N, r, G, seed and mode (hypothesis)."
import pandas as pd
from hypothesis import given, settings, strategies as st

from recursive_loops.chain import ChainConfig, mix_training_set, human_slice


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 60), r=st.floats(0, 1, allow_nan=False), gens=st.integers(1, 7), seed=st.integers(0, 2 ** 32 - 1),
       accumulate=st.booleans(), n_heldout=st.integers(1, 9), n_generate=st.integers(0, 20))
def test_mixing_invariants(n, r, gens, seed, accumulate, n_heldout, n_generate):
    cfg = ChainConfig(n_train=n, ratio=r, generations=gens, seed=seed, accumulate=accumulate, n_heldout=n_heldout,
                      n_generate=n_generate).validate()
    need = cfg.human_needed()
    human = pd.DataFrame({"text": [f"human {i}" for i in range(need)], "text_id": [f"h{i}" for i in range(need)]})
    heldout = set(human.text_id[:n_heldout])
    generated, used = {}, []
    for g in range(gens):
        rows = mix_training_set(cfg, g, human, generated)
        syn = [x for x in rows if x["source"] == "synthetic"]
        hum = [x for x in rows if x["source"] == "human"]
        assert len(rows) == n                                          # exactly N texts
        assert len(syn) == (0 if g == 0 else int(round(n * r)))        # exactly round(N*r) synthetic from g >= 1
        src = {int(x["origin"][4:]) for x in syn}
        assert all(s < g for s in src)                                 # only from earlier generations
        if not accumulate: assert src <= {g - 1}                       # replace: only g-1
        assert all(x["text"].startswith(f"gen {int(x['origin'][4:])} ") for x in syn)  # the text really came from there
        assert not heldout & {x["origin"] for x in hum}                # held-out texts never trained on
        used += [x["origin"] for x in hum]
        s, e = human_slice(cfg, g)
        assert e <= need
        generated[g] = [dict(text=f"gen {g} text {i}") for i in range(cfg.n_to_generate)]  # generated.jsonl rows
    assert len(used) == len(set(used))                                 # no human text used twice in a chain
    assert len(used) == need - n_heldout                               # and the chain consumes exactly what it asked for
