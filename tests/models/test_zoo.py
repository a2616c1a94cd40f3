""" The paper's zoo: every model registered, its layout, params to the published digit, MACs as a ratio."""
from typing import List

import pytest
import timm
import torch.nn as nn

import timm_mod  # noqa: F401
from timm_mod import MoDBlock
from timm_mod.models import (
    OUR_MODELS, PAPER_BASELINE_GMACS, PAPER_MODELS, count_params_and_macs, describe_zoo, zoo_table_rows)


def published_digits(value: str) -> int:
    return len(value.split('.')[1]) if '.' in value else 0


def model_stages(model: nn.Module) -> List[nn.Sequential]:
    if hasattr(model, 'blocks'):
        return list(model.blocks)
    return [model.layer1, model.layer2, model.layer3, model.layer4]


def test_every_paper_model_and_ours_is_registered() -> None:
    assert set(PAPER_MODELS) | set(OUR_MODELS) == set(timm.list_models('*_mod*'))
    assert not set(PAPER_MODELS) & set(OUR_MODELS)


def test_zoo_table_marks_our_models_and_compares_them_with_their_original() -> None:
    rows = {row[0]: row for row in zoo_table_rows(describe_zoo('*_mod'))}
    for name, original in OUR_MODELS.items():
        row = rows[name]
        assert row[1] == 'ours (not in the paper)' and row[5] == '-'
        params_ratio, mac_ratio = (float(row[i].split()[0]) for i in (6, 8))
        assert row[6].endswith(f'({original})') and 0.3 < params_ratio < 1 and 0.3 < mac_ratio < 1
    assert rows['resnet50_mod'][1] == 'ResNet50-MoD'


@pytest.mark.parametrize('name', PAPER_MODELS)
def test_params_match_paper_to_the_published_digit(name: str) -> None:
    paper = PAPER_MODELS[name]
    params, _ = count_params_and_macs(name)
    assert round(params / 1e6, published_digits(paper.params)) == float(paper.params)


@pytest.mark.parametrize('options', [{'selector_act': 'gelu'}, {'selector_act': 'leaky_relu'},
                                     {'selector_decay': False}, {'score_scaling': 'straight_through'},
                                     {'selector_gain': 10.0, 'selector_norm': True}],
                         ids=lambda o: '-'.join(map(str, o.values())))
@pytest.mark.parametrize('name', ['resnet50_mod', 'mobilenetv2_mod'])
def test_selector_options_keep_the_papers_parameter_counts(name: str, options) -> None:
    paper = PAPER_MODELS[name]
    params, _ = count_params_and_macs(name, **options)
    assert round(params / 1e6, published_digits(paper.params)) == float(paper.params)


def test_fixed_routing_has_the_papers_random_routing_parameter_count() -> None:
    """ Fixed routing drops the selectors as random routing does: resnet50_mod with it has MoD50 rand.'s count."""
    paper = PAPER_MODELS['resnet50_mod_rand']
    params, _ = count_params_and_macs('resnet50_mod', routing='fixed')
    assert round(params / 1e6, published_digits(paper.params)) == float(paper.params)


@pytest.mark.parametrize('name', PAPER_MODELS)
def test_mac_ratio_matches_paper_within_3_percent(name: str) -> None:
    paper = PAPER_MODELS[name]
    _, macs = count_params_and_macs(name)
    _, baseline_macs = count_params_and_macs(paper.baseline)
    paper_ratio = paper.gmacs / PAPER_BASELINE_GMACS[paper.baseline]
    assert macs / baseline_macs == pytest.approx(paper_ratio, rel=0.03)


@pytest.mark.parametrize('name', PAPER_MODELS)
def test_layout_mod_at_odd_indices_with_slim_timm_blocks(name: str) -> None:
    paper = PAPER_MODELS[name]
    model = timm.create_model(name, device='meta')
    stages = model_stages(model)
    c = 16 if name.startswith('mobilenetv2') else 64
    assert tuple(len(stage) for stage in stages) == paper.depths
    for stage in stages:
        for index, block in enumerate(stage):
            assert isinstance(block, MoDBlock) == (index % 2 == 1)
            if isinstance(block, MoDBlock):
                previous_convs = [m for m in stage[index - 1].modules() if isinstance(m, nn.Conv2d)]
                assert block.in_channels == previous_convs[-1].out_channels, 'MoD must see the stage width'
                assert block.k == block.in_channels // c and block.c == c
                assert type(block.block) is type(stage[index - 1])
                assert block.fusion == ('last' if name.endswith('_lk') else 'first')
                assert block.routing == ('random' if name.endswith('_rand') else 'learned')
