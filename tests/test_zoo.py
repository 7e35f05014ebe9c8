"""The model zoo: registry facts, downloads against a real local HTTP server (good, truncated,
checksum mismatch, 404, offline, HTML instead of a checkpoint), the cache, and loading by id
without robustbench. Nothing here touches the internet: test entries point at 127.0.0.1."""
import http.server
import socket
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from eatai.all import arrays_dls, load_model, load_sample, robust_learner
from eatai.cli import main
from eatai.models.cifar_cnn import CifarCNN
from eatai.models.zoo import (
    NO_NORM,
    ZOO,
    ChecksumError,
    Source,
    ZooDownloadError,
    ZooEntry,
    build_zoo_model,
    file_sha256,
    get_entry,
    load_zoo_model,
    register_entry,
    zoo_download,
    zoo_entries,
)

PAPER_IDS = {  # E-AT Tables 2-4 start models: (dataset, threat) -> ids
    ('cifar10', 'linf'): {'Engstrom2019Robustness', 'Gowal2020Uncovering_34_20', 'Carmon2019Unlabeled',
                          'Gowal2020Uncovering_28_10_extra', 'Gowal2020Uncovering_70_16_extra'},
    ('cifar10', 'l2'): {'Engstrom2019Robustness', 'Augustin2020Adversarial', 'Gowal2020Uncovering_extra'},
    ('cifar10', 'l1'): {'Croce2021Mind'},
    ('imagenet', 'linf'): {'Engstrom2019Robustness'},
    ('imagenet', 'l2'): {'Engstrom2019Robustness'},
}
# parameters of RobustBench's model for each architecture, counted on its own architecture files
# (robustbench 1.1.1: bench/zoo_check.py, which also loads their state-dict layout into eatai's models)
RB_PARAMS = {'resnet50_cifar': 23_520_842, 'wrn_28_10': 38_119_866, 'wrn_34_20_dm': 184_531_674,
             'wrn_28_10_dm': 36_479_194, 'wrn_70_16_dm': 266_796_506, 'preact_resnet18_softplus': 11_172_170,
             'xcit_small_12_p4_32': 25_872_154, 'xcit_medium_12_p4_32': 45_893_290,
             'xcit_large_12_p4_32': 103_031_338, 'resnet50': 25_557_032}


# ---------------------------------------------------------------- registry facts

def test_zoo_has_the_papers_start_models():
    for (dataset, threat), ids in PAPER_IDS.items():
        assert ids <= {e.id for e in zoo_entries(dataset, threat)}, (dataset, threat)


def test_paper_figures_are_the_tables_originals():
    best = get_entry('Gowal2020Uncovering_70_16_extra')
    assert (best.paper.clean, best.paper.linf, best.paper.l2, best.paper.l1) == (90.7, 65.6, 66.9, 8.1)
    assert get_entry('Engstrom2019Robustness', 'imagenet', 'l2').paper.union == 13.5
    for e in zoo_entries():   # union can never exceed the weakest threat model
        if e.paper is not None:
            assert e.paper.union <= min(e.paper.linf, e.paper.l2, e.paper.l1) + 1e-9, e.key


@pytest.mark.parametrize('key', sorted(ZOO))
def test_every_entry_builds_with_its_parameter_count(key):
    entry = ZOO[key]
    model = build_zoo_model(entry, device='meta')
    n = sum(p.numel() for p in model.parameters())
    assert n == RB_PARAMS[entry.arch]
    size = 32 if entry.dataset == 'cifar10' else 224
    out = model.model(torch.empty(1, 3, size, size, device='meta'))   # the architecture, shapes only
    assert out.shape == (1, entry.num_classes)


def test_unknown_id_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean 'Gowal2020Uncovering_70_16_extra'"):
        get_entry('Gowal2020Uncovering_70_16_extr')


def test_shared_id_needs_dataset_and_threat():
    with pytest.raises(ValueError, match='several zoo models'):
        get_entry('Engstrom2019Robustness')
    assert get_entry('Engstrom2019Robustness', 'cifar10', 'L2').key == 'cifar10/l2/Engstrom2019Robustness'
    assert get_entry('imagenet/linf/Engstrom2019Robustness').num_classes == 1000


# ---------------------------------------------------------------- a real local HTTP server

class _Handler(http.server.SimpleHTTPRequestHandler):
    timeout = 10   # a stuck client cannot hold the server thread

    def log_message(self, *args):   # quiet
        pass

    def do_GET(self):
        if self.path.startswith('/truncated/'):   # announces the whole file, sends half, hangs up
            data = (Path(self.directory) / self.path.split('/')[-1]).read_bytes()
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) on 127.0.0.1; shut down after the test (and after 60 s whatever happens)."""
    folder = tmp_path / 'www'
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), partial(_Handler, directory=str(folder)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(60, httpd.shutdown)
    guard.daemon = True
    guard.start()
    try:
        yield folder, f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        guard.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    home = tmp_path / 'eatai_home'
    monkeypatch.setenv('EATAI_HOME', str(home))
    return home


@pytest.fixture
def zoo(monkeypatch):
    """Test entries go into a copy of the registry, restored afterwards."""
    monkeypatch.setattr('eatai.models.zoo.ZOO', dict(ZOO))
    from eatai.models import zoo as module
    return module.ZOO


def tiny_checkpoint(folder: Path, name='tiny.pt', seed=0, transform=None) -> dict:
    torch.manual_seed(seed)
    state = CifarCNN(width=4).state_dict()
    torch.save(transform(state) if transform else state, folder / name)
    return state


def tiny_entry(url, **kwargs) -> ZooEntry:
    args = dict(id='Tiny2024Test', dataset='cifar10', threat='linf', arch='cifar_cnn', mean=(0.5,) * 3,
                std=(0.25,) * 3, source=Source('url', url), arch_kwargs={'width': 4})
    return ZooEntry(**{**args, **kwargs})


def cache_files(home: Path) -> list:
    return sorted(p.name for p in home.rglob('*') if p.is_file()) if home.exists() else []


def test_good_download_is_cached_with_its_checksum_and_loads(server, cache, zoo):
    folder, base = server
    state = tiny_checkpoint(folder)
    entry = register_entry(tiny_entry(f'{base}/tiny.pt'))
    model = load_zoo_model('Tiny2024Test', progress=False)
    assert entry.path.exists() and str(entry.path).startswith(str(cache))
    assert (entry.path.parent / 'Tiny2024Test.pt.sha256').read_text().split()[0] == file_sha256(folder / 'tiny.pt')
    for k, v in state.items():
        assert torch.equal(model.model.state_dict()[k], v), k
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5] * 3)) and not model.training
    assert model.zoo_entry is entry
    (folder / 'tiny.pt').unlink()   # the second load reads the cache, not the server
    assert zoo_download('Tiny2024Test', progress=False) == entry.path


def test_corrupted_cache_file_is_refused_and_removed(server, cache, zoo):
    folder, base = server
    tiny_checkpoint(folder)
    entry = register_entry(tiny_entry(f'{base}/tiny.pt'))
    path = zoo_download('Tiny2024Test', progress=False)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match='recorded at download'):
        load_zoo_model('Tiny2024Test', progress=False)
    assert not entry.path.exists()
    assert load_zoo_model('Tiny2024Test', progress=False) is not None   # downloaded anew


def test_truncated_download_is_not_kept(server, cache, zoo):
    folder, base = server
    tiny_checkpoint(folder)
    register_entry(tiny_entry(f'{base}/truncated/tiny.pt'))
    with pytest.raises(ZooDownloadError, match='Manual route'):
        zoo_download('Tiny2024Test', progress=False)
    assert cache_files(cache) == []


def test_truncated_file_served_as_complete_is_not_kept(server, cache, zoo):
    folder, base = server   # the server itself has a cut file (a broken mirror): HTTP cannot tell
    tiny_checkpoint(folder)
    data = (folder / 'tiny.pt').read_bytes()
    (folder / 'cut.pt').write_bytes(data[:len(data) * 2 // 3])
    register_entry(tiny_entry(f'{base}/cut.pt'))
    with pytest.raises(ValueError, match='damaged or truncated archive'):
        zoo_download('Tiny2024Test', progress=False)
    assert cache_files(cache) == []


def test_checksum_mismatch_with_the_pinned_one(server, cache, zoo):
    folder, base = server
    tiny_checkpoint(folder)
    register_entry(tiny_entry(f'{base}/tiny.pt', sha256='0' * 64))
    with pytest.raises(ChecksumError, match='pinned in the zoo'):
        zoo_download('Tiny2024Test', progress=False)
    assert cache_files(cache) == []


def test_404_says_where_to_put_the_file(server, cache, zoo):
    _, base = server
    entry = register_entry(tiny_entry(f'{base}/missing.pt'))
    with pytest.raises(ZooDownloadError, match='404') as info:
        zoo_download('Tiny2024Test', progress=False)
    assert str(entry.path) in str(info.value) and f'{base}/missing.pt' in str(info.value)
    assert cache_files(cache) == []


def test_offline_gives_the_manual_route_and_a_hand_placed_file_loads(server, cache, zoo):
    folder, _ = server
    with socket.socket() as s:   # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    entry = register_entry(tiny_entry(f'http://127.0.0.1:{port}/tiny.pt'))
    with pytest.raises(ZooDownloadError, match='Manual route: download .* save it as'):
        load_zoo_model('Tiny2024Test', progress=False)
    assert cache_files(cache) == []
    state = tiny_checkpoint(folder)   # the manual route: put the file where the message says
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    entry.path.write_bytes((folder / 'tiny.pt').read_bytes())
    model = load_zoo_model('Tiny2024Test', progress=False)
    assert torch.equal(model.model.head.weight, state['head.weight'])
    assert (entry.path.parent / 'Tiny2024Test.pt.sha256').exists()   # recorded on first load


def test_html_page_instead_of_a_checkpoint(server, cache, zoo):
    folder, base = server
    (folder / 'quota.pt').write_text('<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>'
                                     '</head><body>Too many users have viewed or downloaded this file</body></html>')
    register_entry(tiny_entry(f'{base}/quota.pt'))
    with pytest.raises(ValueError, match='HTML page'):
        zoo_download('Tiny2024Test', progress=False)
    assert cache_files(cache) == []


def test_manual_source_explains_where_to_download(cache):
    with pytest.raises(ZooDownloadError, match='drive.google.com/drive/folders'):
        zoo_download('Croce2021Mind', progress=False)


# ---------------------------------------------------------------- checkpoint layouts the zoo adapts

def test_robustness_library_layout_via_key_prefix(server, cache, zoo):
    folder, base = server

    def robustness_layout(state):   # MadryLab's robustness: the model, an attacker copy, a normaliser
        wrapped = {f'module.model.{k}': v for k, v in state.items()}
        wrapped.update({f'module.attacker.model.{k}': v for k, v in state.items()})
        wrapped['module.normalizer.new_mean'] = torch.zeros(3, 1, 1)
        return {'model': wrapped, 'epoch': 90}
    state = tiny_checkpoint(folder, transform=robustness_layout)
    register_entry(tiny_entry(f'{base}/tiny.pt', key_prefix='model.'))
    model = load_zoo_model('Tiny2024Test', progress=False)
    assert torch.equal(model.model.features[0][0].weight, state['features.0.0.weight'])


def test_xcit_official_names_load_through_timms_filter(server, cache, zoo):
    import timm
    folder, base = server
    torch.manual_seed(0)
    xcit = timm.create_model('xcit_small_12_p4_32', embed_dim=32, depth=1, num_heads=4)
    official = {k.replace('pos_embed.', 'pos_embeder.'): v for k, v in xcit.state_dict().items()}
    assert any(k.startswith('pos_embeder.') for k in official)
    torch.save({'model': official}, folder / 'xcit.pth.tar')
    register_entry(tiny_entry(f'{base}/xcit.pth.tar', arch='xcit_small_12_p4_32', state_filter='xcit',
                              arch_kwargs={'embed_dim': 32, 'depth': 1, 'num_heads': 4}))
    model = load_zoo_model('Tiny2024Test', progress=False)
    assert torch.equal(model.model.pos_embed.token_projection.weight, xcit.pos_embed.token_projection.weight)


# ---------------------------------------------------------------- load_model, robust_learner, CLI

def test_load_model_and_robust_learner_need_no_robustbench(server, cache, zoo, monkeypatch):
    folder, base = server
    state = tiny_checkpoint(folder)
    register_entry(tiny_entry(f'{base}/tiny.pt', mean=NO_NORM[0], std=NO_NORM[1]))
    monkeypatch.setitem(sys.modules, 'robustbench', None)   # `import robustbench` now fails
    model = load_model('Tiny2024Test', progress=False)
    assert torch.equal(model.model.head.bias, state['head.bias'])
    x, y, xv, yv = load_sample()
    learn = robust_learner(arrays_dls(x[:32], y[:32], xv[:32], yv[:32], bs=16), 'Tiny2024Test', progress=False)
    assert torch.equal(learn.model.model.head.bias, state['head.bias'])


def test_cli_zoo_list_and_get(server, cache, zoo, capsys):
    folder, base = server
    tiny_checkpoint(folder)
    register_entry(tiny_entry(f'{base}/tiny.pt'))
    assert main(['zoo', 'list', '--width', '250']) == 0
    out = capsys.readouterr().out
    assert 'Gowal2020Uncovering_70_16_extra' in out and 'Tiny2024Test' in out and 'wrn_70_16_dm' in out
    assert main(['zoo', 'get', 'Tiny2024Test', '--quiet']) == 0
    assert file_sha256(folder / 'tiny.pt') in capsys.readouterr().out
    assert main(['zoo', 'get', 'Gowal2020Uncovering_70_16_Extra']) == 2
    assert "Did you mean 'Gowal2020Uncovering_70_16_extra'" in capsys.readouterr().err


def test_docs_zoo_section_runs(tmp_path, monkeypatch, capsys):
    """The zoo lines of docs/how-to/zoo-vit.md, verbatim: the entry they print is the paper's WRN-70-16."""
    import re
    page = (Path(__file__).resolve().parents[1] / 'docs' / 'how-to' / 'zoo-vit.md').read_text()
    code = re.search(r"```python\n(.+?)\n```", page.split('## The zoo', 1)[1], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, 'zoo-vit.md', 'exec'), namespace)
    assert namespace['entry'].arch == 'wrn_70_16_dm'
    assert f"{len(zoo_entries())} entries," in capsys.readouterr().out


def test_deepmind_layout_without_mean_std_buffers_loads_and_wrong_ones_are_refused():
    # RobustBench's DMWideResNet keeps mean/std out of its state dict; eatai's keeps them to check them
    from eatai.models.weights import load_weights
    from eatai.models.wide_resnet import DMWideResNet
    from eatai.models.zoo import _filtered
    from eatai.models import Normalized
    entry = ZOO['cifar10/linf/Gowal2020Uncovering_70_16_extra']
    torch.manual_seed(0)
    published = {k: v for k, v in DMWideResNet(depth=10, width=1).state_dict().items() if k not in ('mean', 'std')}
    model = Normalized(DMWideResNet(depth=10, width=1), entry.mean, entry.std)
    load_weights(model, _filtered(entry, published, model.model))   # strict
    assert torch.equal(model.model.init_conv.weight, published['init_conv.weight'])
    wrong = {**published, 'mean': torch.zeros(3, 1, 1), 'std': torch.ones(3, 1, 1)}
    with pytest.raises(RuntimeError, match='mean is'):
        load_weights(model, _filtered(entry, wrong, model.model))
