"""Templates, encoding, batches and the position check."""

from __future__ import annotations

import pytest

from jaxprompt.data.batches import Batches, collate, eval_batches
from jaxprompt.data.templates import Encoded, Template, TemplateError, check_positions, common_prefix_length, encode
from jaxprompt.prompts import SoftPrompt


def test_template_errors():
    with pytest.raises(TemplateError, match="has no {prompt} placeholder"):
        Template("Here are two {word1} and", " {word2}").require_prompt()
    with pytest.raises(TemplateError, match="malformed placeholder"):
        Template("Here are {prompt} {word1 and", " {word2}")
    with pytest.raises(TemplateError, match="uses no field"):
        Template("{prompt} {x}", " always")
    with pytest.raises(TemplateError, match="cannot contain {prompt}"):
        Template("{prompt} {x}", " {prompt}{y}")
    with pytest.raises(TemplateError, match=r"\{prompt:0\} .*needs at least 1 virtual token"):
        Template("{prompt:0} {x}", " {y}")
    with pytest.raises(TemplateError, match="the template must be a string, got 5"):
        Template(5, " {y}")
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    with pytest.raises(TemplateError, match="example has no field 'word1'"):
        t.pieces({"w1": "hot", "word2": "cold"}, 3)


def test_pieces_and_slots(gpt2_tokenizer):
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    assert t.pieces({"word1": "hot", "word2": "cold"}, 3) == ["Here are two", 3, " hot and"]
    assert t.pieces({"word1": "hot", "word2": "cold"}, 3, virtual=False) == ["Here are two hot and"]
    e = encode(t, {"word1": "hot", "word2": "cold"}, gpt2_tokenizer, SoftPrompt(length=3))
    assert e.slots == [-1, -1, -1, 0, 1, 2, -1, -1, -1] and e.n_target == 1
    assert e.tokens[-3:] == gpt2_tokenizer.encode(" hot and cold")
    hard = encode(t, {"word1": "hot", "word2": "cold"}, gpt2_tokenizer, SoftPrompt(length=3), hard_prompt="antonyms")
    assert hard.tokens == [4342, 389, 734, 281, 1122, 88, 907, 3024, 290, 4692]  # GPT-2's own tokenisation
    multi = Template("{prompt:2} Q: {x} {prompt} A:", " {y}")
    assert multi.n_virtual(4) == 6
    m = encode(multi, {"x": "a", "y": "b"}, gpt2_tokenizer, SoftPrompt(length=4))
    assert [s for s in m.slots if s >= 0] == list(range(6)) and m.slots[:2] == [0, 1]


def test_bos_comes_after_a_leading_prompt(gpt2_tokenizer):
    """An OPT-style tokenizer adds BOS; PEFT's layout is [virtual tokens, BOS, text]."""
    import copy

    tok = copy.copy(gpt2_tokenizer)
    tok.add_bos, tok.bos_token_id = True, 7
    lead = encode(Template("{prompt} {x} =", " {y}"), {"x": "a", "y": "b"}, tok, SoftPrompt(length=2))
    assert lead.tokens[2] == 7 and lead.slots[:3] == [0, 1, -1]
    infix = encode(Template("Q {prompt} {x} =", " {y}"), {"x": "a", "y": "b"}, tok, SoftPrompt(length=2))
    assert infix.tokens[0] == 7


def test_loss_mask_covers_exactly_the_target_tokens(gpt2_tokenizer):
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    rows = [{"word1": "hot", "word2": "cold"}, {"word1": "utopia", "word2": "dystopia"},
            {"word1": "aphelion", "word2": "perihelion"}]
    examples = [encode(t, r, gpt2_tokenizer, SoftPrompt(length=5)) for r in rows]
    for padding in ("right", "left"):
        batch = collate(examples, 50256, padding)
        for b, r in enumerate(rows):
            target_ids = batch["tokens"][b][batch["loss_mask"][b] == 1]
            assert list(target_ids) == gpt2_tokenizer.encode(" " + r["word2"])
            k = int(batch["target_weight"][b].sum())
            assert list(batch["tokens"][b][batch["target_index"][b, :k]]) == list(target_ids)
        assert batch["tokens"].shape[1] == 16 and batch["target_index"].shape[1] == 4  # buckets


def test_batches_are_a_pure_function_of_the_step():
    examples = [Encoded([i, i], [-1, -1], 1) for i in range(10)]
    a, b = Batches(examples, 4, 0, seed=1), Batches(examples, 4, 0, seed=1)
    assert [a.indices(s) for s in range(7)] == [b.indices(s) for s in reversed(range(7))][::-1]
    seen = [i for s in range(5) for i in a.indices(s)]  # 20 draws = two epochs, each a permutation
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert Batches(examples, 4, 0, seed=2).indices(0) != a.indices(0)
    with pytest.raises(TemplateError, match="training set is empty"):
        Batches([], 4, 0)


def test_eval_batches_fill_the_last_batch_with_zero_weight_rows():
    examples = [Encoded([1, 2, 3], [-1, -1, -1], 1) for _ in range(5)]
    batches = list(eval_batches(examples, 4, 0))
    assert [idx for idx, _ in batches] == [[0, 1, 2, 3], [4]]
    last = batches[-1][1]
    assert last["tokens"].shape[0] == 4 and last["target_weight"][1:].sum() == 0


def test_common_prefix_length(gpt2_tokenizer):
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    examples = [encode(t, {"word1": a, "word2": b}, gpt2_tokenizer, SoftPrompt(length=4)) for a, b in (("hot", "cold"), ("up", "down"))]
    assert common_prefix_length(examples) == 3 + 4
    same = [encode(t, {"word1": "hot", "word2": w}, gpt2_tokenizer, SoftPrompt(length=4)) for w in ("cold", "chilly")]
    assert common_prefix_length(same) == len(same[0]) - same[0].n_target - 1  # never into the targets


def test_sequences_past_the_position_table_are_refused():
    examples = [Encoded([1] * 120, [-1] * 120, 1), Encoded([1] * 30, [-1] * 30, 1)]
    check_positions(examples, 128)
    with pytest.raises(TemplateError, match="input of 120 tokens \\+ 300 new tokens needs 420 positions; "
                                            "the model has 128"):
        check_positions(examples, 128, new_tokens=300)
    with pytest.raises(TemplateError, match="input of 120 tokens \\+ 20 prefix positions needs 140 positions"):
        check_positions(examples, 128, prefix=20)
    check_positions(examples, 128, prefix=8)
    with pytest.raises(TemplateError, match="input of 120 tokens is longer than the model's 100 positions"):
        check_positions(examples, 100)


def test_encoding_knows_the_method(gpt2_tokenizer):
    """A length is refused (which slots a method fills is the method's); prefix tuning and adaption
    prompts leave `{prompt}` empty, where feeding its slots to the model would read pad tokens."""
    from jaxprompt.prompts import AdaptionPrompt, PrefixTuning

    t = Template("Here are two {prompt} {word1} and", " {word2}")
    row = {"word1": "hot", "word2": "cold"}
    with pytest.raises(TypeError, match="takes the prompt method"):
        encode(t, row, gpt2_tokenizer, 3)
    text = gpt2_tokenizer.encode("Here are two hot and cold")
    for method in (PrefixTuning(length=3), AdaptionPrompt(length=3), None):
        e = encode(t, row, gpt2_tokenizer, method)
        assert e.tokens == text and all(s < 0 for s in e.slots), method
    soft = encode(t, row, gpt2_tokenizer, SoftPrompt(length=3))
    assert [s for s in soft.slots if s >= 0] == [0, 1, 2] and len(soft.tokens) == len(text) + 3


def test_a_batch_carries_its_shared_head_and_refuses_rows_that_do_not_share_it(gpt2_tokenizer):
    """`shared_len` computed on rows that share a head, applied to rows that do not, would give every
    row row 0's head: refused. The batch says how many positions it shares (a shape, so a loss
    reads it when traced)."""
    from jaxprompt.data.batches import collate, longest

    t = Template("Here are two {prompt} {word1} and", " {word2}")
    method = SoftPrompt(length=2)
    sharing = [encode(t, {"word1": a, "word2": b}, gpt2_tokenizer, method) for a, b in (("hot", "cold"), ("up", "down"))]
    S = common_prefix_length(sharing)
    assert collate(sharing, 50256, shared_len=S)["shared"].shape == (2, S)
    assert collate(sharing, 50256)["shared"].shape == (2, 0)
    other = encode(Template("A {prompt} {word1} and", " {word2}"), {"word1": "a", "word2": "b"}, gpt2_tokenizer, method)
    with pytest.raises(ValueError, match=f"do not share their first {S} positions"):
        collate(sharing + [other], 50256, shared_len=S)
    # one shape for every batch: the longest example's bucket
    assert collate(sharing[:1], 50256, pad_to=longest(sharing + [other]))["tokens"].shape[1] == \
        collate(sharing + [other], 50256)["tokens"].shape[1]
    with pytest.raises(ValueError, match="shorter than the longest row"):
        collate(sharing, 50256, pad_to=2)
