"""The model zoo: the robust models the paper (Tables 2, 3, 4) and RAMP start from, by RobustBench id,
with their eatai architecture, normalisation and download source. Loading one needs no `robustbench`.

Facts (ids, Drive ids, URLs, architectures, normalisation) are those of RobustBench's model zoo
(`robustbench/model_zoo/cifar10.py`, `imagenet.py`, `architectures/xcit.py`); `verified=False`
marks an entry whose source or layout could not be confirmed there (see its `note`). `paper` holds
the accuracy the E-AT paper reports for the original model (1000 test points, APGD-CE + APGD-T),
for reference, not as a target.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch
from torch import nn

from .checkpoint import build_model
from .download import ChecksumError, Source, ZooDownloadError, cache_dir, cached_path, download, file_sha256
from .weights import load_state_dict_file, load_weights
from .normalize import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

# the download names too: `eatai.models.zoo` is the zoo's one public module
__all__ = ['ZooEntry', 'PaperResult', 'ZOO', 'zoo_entries', 'get_entry', 'register_entry', 'zoo_download',
           'build_zoo_model', 'load_zoo_model', 'is_zoo_id', 'NO_NORM', 'Source', 'cache_dir', 'ZooDownloadError',
           'ChecksumError', 'file_sha256']

NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))   # the model takes [0,1] inputs as they are


@dataclass(frozen=True)
class PaperResult:
    """Accuracy (%) the E-AT paper reports for the original model: clean, per threat model, union."""

    table: str
    clean: float
    linf: float
    l2: float
    l1: float
    union: float | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: RobustBench id, dataset, training threat model, eatai architecture (+ kwargs),
    normalisation (mean, std), download source, the paper's figures, and what is confirmed."""

    id: str
    dataset: str                 # 'cifar10' | 'imagenet'
    threat: str                  # 'linf' | 'l2' | 'l1': the threat model it was trained for
    arch: str                    # a timm name registered by eatai (or timm's own)
    mean: tuple
    std: tuple
    source: Source
    paper: PaperResult | None = None
    used_by: tuple = ()          # ('E-AT Table 2', 'RAMP Table 2', ...)
    arch_kwargs: dict = field(default_factory=dict)
    num_classes: int = 10
    key_prefix: str = ''         # keep only the keys under this prefix (then stripped), after 'module.' is
    state_filter: str | None = None   # 'xcit': timm's XCiT key renames
    sha256: str | None = None    # pinned checksum when known; else recorded on first download
    verified: bool = True
    note: str = ''

    @property
    def key(self) -> str:
        """Unique name: RobustBench reuses an id across datasets and threat models."""
        return f"{self.dataset}/{self.threat}/{self.id}"

    @property
    def filename(self) -> str:
        """The file name in the cache."""
        return f"{self.id}.pt"

    @property
    def path(self):
        """Where the cache keeps (or will keep) the checkpoint."""
        return cached_path(self.dataset, self.threat, self.filename)

    @property
    def normalisation(self) -> str:
        """'none', 'cifar10', 'imagenet' or the mean/std values."""
        known = {NO_NORM: 'none', (CIFAR10_MEAN, CIFAR10_STD): 'cifar10', (IMAGENET_MEAN, IMAGENET_STD): 'imagenet'}
        if (tuple(self.mean), tuple(self.std)) in known:
            return known[tuple(self.mean), tuple(self.std)]
        return f"mean {tuple(round(m, 4) for m in self.mean)}, std {tuple(round(s, 4) for s in self.std)}"


def _gd(drive_id: str) -> Source:
    return Source('gdrive', drive_id)


_RB_RELEASE = 'https://github.com/RobustBench/robustbench/releases/download/v1.1/'
_ENGSTROM_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_AUGUSTIN = ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
             (0.24703225141799082, 0.24348516474564, 0.26158783926049628))
_T2, _T3, _T4 = 'E-AT Table 2', 'E-AT Table 3', 'E-AT Table 4'


def _xcit(size: str, arch: str) -> ZooEntry:
    return ZooEntry(f'Debenedetti2022Light_XCiT-{size}', 'cifar10', 'linf', arch, CIFAR10_MEAN, CIFAR10_STD,
                    Source('url', f'{_RB_RELEASE}debenedetti2022light-xcit-{size[0].lower()}-cifar10-linf.pth.tar'),
                    used_by=('Debenedetti et al. 2022',), state_filter='xcit')


_ENTRIES = [
    # CIFAR-10, l-inf (eps 8/255): paper Table 2, first block
    ZooEntry('Engstrom2019Robustness', 'cifar10', 'linf', 'resnet50_cifar', *_ENGSTROM_CIFAR,
             _gd('1etqmQsksNIWBvBQ4r8ZFk_3FJlLWr8Rr'), PaperResult(_T2, 88.7, 50.9, 59.4, 5.0, 5.0), (_T2,)),
    ZooEntry('Gowal2020Uncovering_34_20', 'cifar10', 'linf', 'wrn_34_20_dm', CIFAR10_MEAN, CIFAR10_STD,
             _gd('1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O'), PaperResult(_T2, 87.2, 56.6, 63.7, 8.5, 8.5), (_T2,)),
    ZooEntry('Carmon2019Unlabeled', 'cifar10', 'linf', 'wrn_28_10', *NO_NORM,
             _gd('15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ'), PaperResult(_T2, 90.3, 59.1, 65.7, 8.0, 8.0), (_T2,),
             arch_kwargs={'sub_block1': True}),
    ZooEntry('Gowal2020Uncovering_28_10_extra', 'cifar10', 'linf', 'wrn_28_10_dm', CIFAR10_MEAN, CIFAR10_STD,
             _gd('1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2'), PaperResult(_T2, 89.9, 62.9, 67.2, 10.8, 10.8), (_T2,)),
    ZooEntry('Gowal2020Uncovering_70_16_extra', 'cifar10', 'linf', 'wrn_70_16_dm', CIFAR10_MEAN, CIFAR10_STD,
             _gd('1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ'), PaperResult(_T2, 90.7, 65.6, 66.9, 8.1, 8.1),
             (_T2, _T4, 'RAMP Table 2')),
    # CIFAR-10, l2 (eps 0.5): Table 2, second block
    ZooEntry('Engstrom2019Robustness', 'cifar10', 'l2', 'resnet50_cifar', *_ENGSTROM_CIFAR,
             _gd('1O8rGa6xOUIRwQ-M4ESrCjzknby8TM2ZE'), PaperResult(_T2, 91.5, 29.7, 70.3, 27.0, 23.0), (_T2,)),
    ZooEntry('Augustin2020Adversarial', 'cifar10', 'l2', 'resnet50_cifar', *_AUGUSTIN,
             _gd('1oDghrzNfkStC2wr5Fq8T896yNV4wVG4d'), PaperResult(_T2, 91.1, 37.7, 73.4, 31.2, 28.8), (_T2,)),
    ZooEntry('Gowal2020Uncovering_extra', 'cifar10', 'l2', 'wrn_70_16_dm', CIFAR10_MEAN, CIFAR10_STD,
             _gd('1pkZDCpCBShpAnx92n8PUeNOY1fSiTi0s'), PaperResult(_T2, 94.1, 43.1, 81.7, 34.6, 32.4), (_T2, _T4),
             note="RobustBench's id for Gowal et al.'s l2 WRN-70-16 with extra data has no _70_16"),
    # CIFAR-10, l1 (eps 12): not in RobustBench; the authors' Drive folder
    ZooEntry('Croce2021Mind', 'cifar10', 'l1', 'preact_resnet18_softplus', CIFAR10_MEAN, CIFAR10_STD,
             Source('manual', 'https://drive.google.com/drive/folders/1hYWHp5UbTAm9RhSb8JkJZtcB0LDZDvkT'),
             PaperResult(_T2, 87.1, 22.0, 64.8, 60.3, 22.0), (_T2, _T4), verified=False,
             note="not a RobustBench id: file pretr_L1.pth in the authors' Drive folder (fra31/robust-finetuning); "
                  "architecture (softplus PreAct RN-18) and normalisation not confirmed"),
    # CIFAR-10 vision transformers (Debenedetti et al. 2022), l-inf 8/255
    _xcit('S12', 'xcit_small_12_p4_32'),
    _xcit('M12', 'xcit_medium_12_p4_32'),
    _xcit('L12', 'xcit_large_12_p4_32'),
    # ImageNet ResNet-50s of Engstrom et al. (robustness library): Tables 3 and 4
    ZooEntry('Engstrom2019Robustness', 'imagenet', 'linf', 'resnet50', IMAGENET_MEAN, IMAGENET_STD,
             _gd('1T2Fvi1eCJTeAOEzrH_4TAIwO8HTOYVyn'), PaperResult(_T3, 62.9, 29.8, 17.7, 0.0, 0.0), (_T3, _T4),
             num_classes=1000, note="eps 4/255; torchvision's ResNet-50 keys, which timm's resnet50 shares"),
    ZooEntry('Engstrom2019Robustness', 'imagenet', 'l2', 'resnet50', IMAGENET_MEAN, IMAGENET_STD,
             Source('url', 'https://www.dropbox.com/s/knf4uimlqsi1yz8/imagenet_l2_3_0.pt?dl=1'),
             PaperResult(_T3, 58.7, 25.0, 40.5, 14.0, 13.5), (_T3, _T4), num_classes=1000,
             key_prefix='model.', verified=False,
             note="eps 3; not in RobustBench (ImageNet has no l2 board): the robustness library's "
                  "imagenet_l2_3_0.pt; its pickled extras may need trusted=True"),
]

ZOO: dict[str, ZooEntry] = {e.key: e for e in _ENTRIES}


def zoo_entries(dataset: str | None = None, threat: str | None = None) -> list[ZooEntry]:
    """The registered entries, optionally of one dataset and/or threat model."""
    return [e for e in ZOO.values() if (dataset is None or e.dataset == dataset)
            and (threat is None or e.threat == _threat(threat))]


def register_entry(entry: ZooEntry, overwrite: bool = False) -> ZooEntry:
    """Add an entry (your own checkpoints, a mirror) to the zoo."""
    if entry.key in ZOO and not overwrite:
        raise ValueError(f"{entry.key} is already in the zoo: pass overwrite=True to replace it")
    ZOO[entry.key] = entry
    return entry


def _threat(name: str) -> str:
    return {'Linf': 'linf', 'L2': 'l2', 'L1': 'l1'}.get(name, name.lower())


def is_zoo_id(name: str) -> bool:
    """Whether `name` is a zoo id ('Gowal2020Uncovering_70_16_extra') or key ('cifar10/linf/...')."""
    return isinstance(name, str) and (name in ZOO or any(e.id == name for e in ZOO.values()))


def get_entry(model_id: str, dataset: str | None = None, threat_model: str | None = None) -> ZooEntry:
    """The entry of a RobustBench id (or 'dataset/threat/id' key); `dataset` / `threat_model` pick
    among entries sharing an id (e.g. Engstrom2019Robustness: CIFAR-10 l-inf and l2, ImageNet)."""
    if model_id in ZOO:
        return ZOO[model_id]
    matches = [e for e in ZOO.values() if e.id == model_id and (dataset is None or e.dataset == dataset)
               and (threat_model is None or e.threat == _threat(threat_model))]
    if len(matches) == 1:
        return matches[0]
    if matches:
        keys = ', '.join(e.key for e in matches)
        raise ValueError(f"{model_id!r} names several zoo models ({keys}): pass dataset=... and threat_model=... "
                         "or the full key")
    same_id = [e.key for e in ZOO.values() if e.id == model_id]
    if same_id:
        raise ValueError(f"{model_id!r} is in the zoo only as {', '.join(same_id)}, not for dataset={dataset!r}, "
                         f"threat_model={threat_model!r}")
    close = difflib.get_close_matches(model_id, sorted({e.id for e in ZOO.values()}), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ''
    raise ValueError(f"unknown zoo id {model_id!r}.{hint} `eatai zoo list` shows the zoo; register_entry adds "
                     "a model of your own.")


def zoo_download(model_id: str, dataset: str | None = None, threat_model: str | None = None,
                 progress: bool = True, force: bool = False):
    """Download (or find in the cache, checksum-verified) a zoo checkpoint; returns its path."""
    entry = get_entry(model_id, dataset, threat_model)
    return download(entry.source, entry.path, name=entry.key, sha256=entry.sha256, progress=progress, force=force)


def _filtered(entry: ZooEntry, state: dict, model: nn.Module) -> dict:
    if entry.key_prefix:
        kept = {k[len(entry.key_prefix):]: v for k, v in state.items() if k.startswith(entry.key_prefix)}
        if not kept:
            raise ValueError(f"{entry.key}: no weights under {entry.key_prefix!r} in the checkpoint "
                             f"(keys start like {sorted(state)[:3]})")
        state = kept
    if entry.state_filter == 'xcit':   # the official XCiT names (pos_embeder) as timm renames them
        from timm.models.xcit import checkpoint_filter_fn
        state = checkpoint_filter_fn(dict(state), model)
    # RobustBench's DMWideResNet keeps mean/std out of its state dict (non-persistent buffers), eatai's
    # keeps them in to check them: a checkpoint without them gets the entry's values (already in the model)
    own = model.state_dict()
    for name in ('mean', 'std'):
        if name in own and name not in state and any(k.startswith('init_conv.') for k in state):
            state = {**state, name: own[name]}
    return state


def build_zoo_model(entry: ZooEntry, device='cpu') -> nn.Module:
    """The entry's architecture wrapped in its normalisation, without weights (`device='meta'`: shapes only)."""
    with torch.device(device):
        return build_model(entry.arch, entry.num_classes, entry.mean, entry.std, **entry.arch_kwargs)


def load_zoo_model(model_id: str, dataset: str | None = None, threat_model: str | None = None,
                   progress: bool = True, trusted: bool = False) -> nn.Module:
    """A zoo model with its weights, taking [0,1] inputs (its normalisation inside), in eval mode.
    Downloads into the cache on first use; `trusted=True` lets checkpoints with pickled extras load."""
    entry = get_entry(model_id, dataset, threat_model)
    path = zoo_download(entry.key, progress=progress)
    model = build_zoo_model(entry)
    load_weights(model, _filtered(entry, load_state_dict_file(path, trusted=trusted), model.model))
    model.zoo_entry = entry
    return model.eval()
