"""core/rows.py, core/plan.py and core/kv_swap.py on plain tensors: the batch's rows, each model
call's plan from the settings and the step, and the swap a plan asks for."""
import pytest
import torch


@pytest.fixture(scope="module")
def core(pack):
    return pack.core


def test_key_value_sources(core):
    rows = core.rows.CallRows
    # cond + uncond chunks of [out0, out1, app]: outputs take the appearance of their chunk.
    assert rows(2, 1).kv_sources(6) == (2, 2, 2, 5, 5, 5)
    # one appearance per output
    assert rows(2, 2).kv_sources(4) == (2, 3, 2, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        rows(2, 1).kv_sources(5)
    # [out0, out1, app, str0, str1] x 2 chunks; injection steps take the structure rows
    assert rows(2, 1, 2).kv_sources(10) == (2, 2, 2, 3, 4, 7, 7, 7, 8, 9)
    assert rows(2, 1, 2).kv_sources(10, from_structure=True) == (3, 4, 2, 3, 4, 8, 9, 7, 8, 9)
    # plain copies of the outputs end each chunk and keep their own keys and values
    assert rows(2, 1, 0, 2).kv_sources(10) == (2, 2, 2, 3, 4, 7, 7, 7, 8, 9)
    assert rows(1, 1, 1, 2).kv_sources(5, from_structure=True) == (2, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="1 structures \\+ 2 plain rows"):
        rows(1, 1, 1, 2).kv_sources(6)
    with pytest.raises(ValueError, match="one structure row per output"):
        rows(2, 1, 1).kv_sources(4, from_structure=True)
    # appearances apart (lent by another call): [out0, out1, str0, str1] x 2 chunks; source 8 + i is lent row i
    assert rows(2, 1, 2, appearances_apart=True).kv_sources(8) == (8, 8, 2, 3, 9, 9, 6, 7)
    assert rows(2, 2, 2, appearances_apart=True).kv_sources(8) == (8, 9, 2, 3, 10, 11, 6, 7)
    assert rows(2, 1, 2, appearances_apart=True).kv_sources(8, from_structure=True) == (2, 3, 2, 3, 6, 7, 6, 7)
    # regions: every output takes the region's appearance row
    assert rows(2, 2).kv_sources(4, appearance=1) == (3, 3, 2, 3)


def test_call_rows_join_split_and_output_rows(core):
    rows = core.rows.CallRows(2, 1, 1, 2)
    parts = [torch.full((n, 1), float(i)) for i, n in enumerate((2, 1, 1, 2))]
    batch = rows.join(*parts)
    assert batch.flatten().tolist() == [0, 0, 1, 2, 3, 3]
    assert [part.flatten().tolist() for part in rows.split(batch)] == [[0, 0], [1], [2], [3, 3]]
    assert rows.output_rows(2).tolist() == [1, 1, 0, 0, 1, 1] * 2  # outputs and plain copies
    apart = core.rows.CallRows(2, 1, 1, 0, appearances_apart=True)
    assert apart.join(*parts[:3], parts[3][:0]).flatten().tolist() == [0, 0, 2]
    outputs, appearances, structures, plains = apart.split(torch.arange(3.0))
    assert appearances is None and structures.tolist() == [2.0] and apart.output_rows(1).tolist() == [1, 1, 0]
    assert apart.apart() == core.rows.CallRows(0, 1)


@pytest.mark.parametrize("appearance_shape", [(4, 8, 12), (4, 11, 15)])
def test_sampler_rows_join_and_split(core, appearance_shape):
    """[outputs | appearances (packed when of another shape) | structures]."""
    rows = core.rows.SamplerRows(2, 1, 2, (4, 8, 12), appearance_shape)
    outputs, structures = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    appearances = torch.randn(1, *appearance_shape)
    x = rows.join(outputs, appearances, structures)
    assert x.shape[0] == 2 + rows.appearance_rows + 2 and rows.appearances_apart == (appearance_shape != (4, 8, 12))
    back = rows.split(x)
    assert all(torch.equal(a, b) for a, b in zip(back, (outputs, appearances, structures)))
    without = core.rows.SamplerRows(2, 1, 0, (4, 8, 12), appearance_shape)
    assert without.join(outputs, appearances, structures).shape[0] == 2 + without.appearance_rows
    assert without.call(structures=True, plain=True) == core.rows.CallRows(2, 1, 0, 2, rows.appearances_apart)


def steps_and_plans(core, count=10, start=0.3, end=0.8, every=5, until=0.59, guidance=None, adain=None,
                    appearance_shape=(4, 8, 12), steered=False, contrast=1.67):
    settings = core.settings.TransferSettings(None, ("site",), start, end, contrast, every, until)
    steps = core.schedule.transfer_steps(count, settings, guidance, adain, steered)
    rows = core.rows.SamplerRows(1, 1, 1 if settings.injects_structure else 0, (4, 8, 12), appearance_shape)
    return steps, [core.plan.plan_step(i, steps, rows, settings, None, 8 << 30) for i in range(count)]


def test_plans_by_the_step(core):
    """Swap on steps 3-7 of 10, from the structure on the one injection step inside it (5:
    every 5th step before round(0.59 * 10) = 6), contrast chunks from the free memory on swap
    steps; the structures from the swap's start (before it they equal the outputs) to the last
    injection step; plain rows and a guidance scale where the swap and guidance are on."""
    guidance = core.settings.GuidanceSettings(3.5, 1.75, 0.5)
    steps, plans = steps_and_plans(core, guidance=guidance)
    assert steps.swap == range(3, 8) and steps.injection == {5} and steps.diverge == 3
    for i, plan in enumerate(plans):
        main = plan.main
        assert main.step == i and main.swap == (3 <= i <= 7) and main.from_structure == (i == 5)
        assert main.contrast_budget == ((8 << 30) // 4 // 8 if main.swap else core.contrast.LEAST_BUDGET)
        assert main.rows.structures == (1 if 3 <= i <= 5 else 0)
        assert (plan.guidance is not None) == (main.rows.plain == 1) == (5 <= i <= 7)
        assert plan.apart is None and not main.borrow and main.kv_store is None


def test_structures_diverge_when_something_acts_on_the_outputs_alone(core):
    """Latent AdaIN after step 1 changes the outputs from step 2 on; a control on the prompt
    from the first step; then the structures run from there (until the last injection step)."""
    adain = core.settings.LatentAdaINSettings(0.1, 1.0)
    steps, plans = steps_and_plans(core, adain=adain)
    assert steps.adain == range(1, 10) and steps.diverge == 2
    assert [plan.main.rows.structures for plan in plans] == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    steered, plans = steps_and_plans(core, steered=True)
    assert steered.diverge == 0 and [plan.main.rows.structures for plan in plans][:6] == [1] * 6


def test_appearances_of_another_size_lend_and_borrow(core):
    """Appearances apart: each step has their own call first; on swap steps that are not
    injection steps it lends its keys and values to the main call's store, which borrows them."""
    _, plans = steps_and_plans(core, appearance_shape=(4, 11, 15))
    for plan in plans:
        assert plan.apart is not None and plan.apart.rows == core.rows.CallRows(0, 1) and not plan.apart.swap
        lends = plan.main.swap and not plan.main.from_structure
        assert plan.apart.lend == plan.main.borrow == lends
        assert (plan.main.kv_store is plan.apart.kv_store) and ((plan.main.kv_store is not None) == lends)
        assert plan.main.rows.appearances_apart


def test_swapped_attention_passes_the_sources_keys_and_values(core):
    q, k, v = (torch.arange(3.0).view(3, 1, 1, 1) + offset for offset in (0, 10, 20))  # (B, heads, N, d)
    seen = {}

    def attention(q_, k_, v_):
        seen.update(q=q_, k=k_, v=v_)
        return q_[:, 0]

    core.kv_swap.swapped_attention(q, k, v, (2, 1, 2), attention)
    assert seen["q"].flatten().tolist() == [0, 1, 2]
    assert seen["k"].flatten().tolist() == [12, 11, 12]
    assert seen["v"].flatten().tolist() == [22, 21, 22]


def test_swapped_attention_routes_swapped_rows(core):
    q, k, v = (torch.arange(4.0).view(4, 1, 1, 1) + offset for offset in (0, 10, 20))
    plain = lambda q_, k_, v_: (k_ + v_)[:, 0]  # noqa: E731
    contrast = lambda q_, k_, v_: -(k_ + v_)[:, 0]  # noqa: E731
    out = core.kv_swap.swapped_attention(q, k, v, (1, 1, 1, 3), plain, contrast)
    # rows 0 and 2 take row 1's keys and values through the contrast attention; 1 and 3 keep theirs
    assert out.flatten().tolist() == [-32, 32, -32, 36]
    # keys and values lent by another call, with other token counts: rows 0 and 2 take lent rows 0 and 1
    lent_k, lent_v = torch.full((2, 1, 3, 1), 100.0), torch.full((2, 1, 3, 1), 200.0)
    lent_k[1] += 1
    seen = []
    out = core.kv_swap.swapped_attention(
        q, k, v, (4, 1, 5, 3), lambda q_, k_, v_: seen.append(k_.shape[2]) or (q_ + k_.sum(2, keepdim=True))[:, 0],
        borrowed=(lent_k, lent_v))
    assert seen == [1, 3] and out.flatten().tolist() == [300, 12, 305, 16]
    plan = core.kv_swap.row_plan
    assert plan((1, 1, 1, 3), torch.device("cpu")) is plan((1, 1, 1, 3), torch.device("cpu"))  # made once per layout
