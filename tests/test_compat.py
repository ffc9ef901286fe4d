"""lm-eval's internals the plugin uses are all in integrations/compat.py, and a rename fails loudly there."""

import lm_eval.models.huggingface as hf_module
import pytest

from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat


def _remove(monkeypatch, cls, name):
    owner = next(klass for klass in cls.__mro__ if name in vars(klass))  # may be defined on a base class
    monkeypatch.delattr(owner, name)


def test_every_internal_exists_in_the_installed_lm_eval():
    compat.check_internals()


def test_a_renamed_internal_is_named(monkeypatch):
    _remove(monkeypatch, hf_module.HFLM, "_encode_pair")
    monkeypatch.delattr(hf_module, "pad_and_concat")
    with pytest.raises(FalseDemoError) as error:
        compat.check_internals()
    message = str(error.value)
    assert "HFLM._encode_pair is gone" in message and "huggingface.pad_and_concat is gone" in message
    assert "\n" not in message


def test_a_changed_signature_is_named(monkeypatch):
    monkeypatch.setattr(hf_module, "pad_and_concat", lambda max_length, tensors: None)
    with pytest.raises(FalseDemoError, match="pad_and_concat lost parameter\\(s\\) padding_side"):
        compat.check_internals()


def test_model_loading_checks_the_internals_first(monkeypatch):
    from lm_eval_false_demos.integrations import loading

    _remove(monkeypatch, hf_module.HFLM, "_encode_pair")
    with pytest.raises(FalseDemoError, match="_encode_pair is gone"):
        loading.create_model("hf", {"pretrained": "/nonexistent"}, 1, "cpu")


def test_right_padding_is_recorded_and_restored():
    import torch

    original = hf_module.pad_and_concat
    seen = []
    with compat.right_padding_recorded(seen.append):
        hf_module.pad_and_concat(4, [torch.ones(2, dtype=torch.long), torch.ones(3, dtype=torch.long)])
        hf_module.pad_and_concat(4, [torch.ones(2, dtype=torch.long)], padding_side="left")
    assert seen == [[2, 3]] and hf_module.pad_and_concat is original


def test_seed_list_follows_lm_eval():
    assert compat.parse_seed_list("0,1234,1234,1234", "7") == [7, 7, 7, 7]
    assert compat.parse_seed_list("0,1234,1234,1234", "1,None,3") == [1, None, 3, 1234]
