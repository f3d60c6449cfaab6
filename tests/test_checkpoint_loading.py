"""mmmambavision.checkpoint: what mmengine runners write loads from anywhere; anything else is refused unexecuted.

The runner tests train a toy model with mmengine's own Runner (AdamW, a LinearLR and a MultiStepLR scheduler, a
message hub, checkpoints every epoch): a real runner checkpoint in a second. The detection and segmentation tools'
end-to-end versions are in test_tools_det.py and test_seg_train.py (slow tier).
"""
import argparse
import collections
import copy
import io
import itertools
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint as mmengine_load_checkpoint
from torch.utils.data import DataLoader, Dataset

import mmmambavision  # noqa: F401  (installs the loader into mmengine, as a config's custom_imports does)
from checkpoint_state import assert_same_state  # noqa: E402  (tests/, on pytest's pythonpath)
from mmmambavision.checkpoint import (CheckpointUnpickler, UnsafeCheckpointError, allowed_globals,
                                      globals_in_checkpoint, load_checkpoint_file, restricted_pickle)

# ------------------------------------------------------------------------------------------------ a toy runner


class _ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.norm(self.linear(inputs))
        if mode == 'loss':
            return dict(loss=((out - targets) ** 2).mean())
        return out


class _ToyData(Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(8, 4, generator=generator)
        self.targets = torch.randn(8, 2, generator=generator)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], targets=self.targets[index])


class _RecordState(Hook):
    """Records the runner's message hub, optimiser and scheduler state after each epoch's checkpoint."""
    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW): the state the checkpoint holds

    def __init__(self):
        self.states = {}

    def after_train_epoch(self, runner):
        self.states[runner.epoch + 1] = copy.deepcopy(_runner_state(runner))  # as CheckpointHook names it


class _RecordStart(Hook):
    """Records the same state right after ``runner.train()`` has loaded or resumed (before any other hook)."""
    priority = 'HIGHEST'

    def before_train(self, runner):
        self.state = copy.deepcopy(_runner_state(runner))


def _runner_state(runner):
    return dict(message_hub=runner.message_hub.state_dict(), optimizer=runner.optim_wrapper.state_dict(),
                param_schedulers=[s.state_dict() for s in runner.param_schedulers])


_RUNNERS = itertools.count()


def _toy_runner(work_dir, max_epochs=2, **kwargs):
    torch.manual_seed(0)
    # each runner its own message hub and logger (mmengine shares instances by experiment name)
    kwargs.setdefault('experiment_name', f'toy_{os.getpid()}_{next(_RUNNERS)}')
    return Runner(
        model=_ToyModel(), work_dir=str(work_dir),
        train_dataloader=DataLoader(_ToyData(), batch_size=2, shuffle=False),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.05)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=3),
                         dict(type='MultiStepLR', milestones=[1, 2], gamma=0.1, by_epoch=True)],
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook',
                                                                                         interval=1)),
        randomness=dict(seed=3), **kwargs)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_run')
    recorder = _RecordState()
    runner = _toy_runner(root / 'runs_a', custom_hooks=[recorder])
    runner.train()
    return dict(root=root, work_dir=str(root / 'runs_a'), states=recorder.states,
                model_state={k: v.clone() for k, v in runner.model.state_dict().items()})


def _copy_elsewhere(path, tmp_path, name='colleague.pth'):
    """A runner checkpoint in a folder no run has used: a colleague's or a downloaded file."""
    target = tmp_path / 'elsewhere' / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return str(target)


def test_a_runner_checkpoint_names_only_allowed_globals(toy_run):
    names = globals_in_checkpoint(osp.join(toy_run['work_dir'], 'epoch_1.pth'))
    # what makes torch's weights_only refuse it: the message hub's HistoryBuffers and the numpy data in them
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr', 'numpy.ndarray',
            'collections.Counter', 'torch._utils._rebuild_tensor_v2'} <= set(names)
    assert set(names) <= set(allowed_globals())
    with pytest.raises(pickle.UnpicklingError):
        torch.load(osp.join(toy_run['work_dir'], 'epoch_1.pth'), weights_only=True)


def test_mmengine_loaders_read_a_runner_checkpoint_from_another_folder(toy_run, tmp_path):
    path = _copy_elsewhere(osp.join(toy_run['work_dir'], 'epoch_2.pth'), tmp_path)
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert checkpoint['meta']['epoch'] == 2
    assert_same_state(checkpoint['message_hub'], toy_run['states'][2]['message_hub'], 'message_hub')
    model = _ToyModel()
    mmengine_load_checkpoint(model, path, map_location='cpu', strict=True)
    assert_same_state(dict(model.state_dict()), toy_run['model_state'], 'model')


def test_load_from_a_checkpoint_in_another_folder(toy_run, tmp_path):
    path = _copy_elsewhere(osp.join(toy_run['work_dir'], 'epoch_2.pth'), tmp_path)
    runner = _toy_runner(tmp_path / 'runs_b', load_from=path)
    runner.load_or_resume()
    assert_same_state(dict(runner.model.state_dict()), toy_run['model_state'], 'model')
    assert runner.epoch == 0  # load_from loads weights only


@pytest.mark.parametrize('epoch', [1, 2])
def test_resume_from_a_file_restores_message_hub_optimizer_and_schedulers(toy_run, tmp_path, epoch):
    path = _copy_elsewhere(osp.join(toy_run['work_dir'], f'epoch_{epoch}.pth'), tmp_path)
    recorder = _RecordStart()
    # runner.train() as tools/train.py --resume FILE runs it; max_epochs reached already: no epoch is trained
    runner = _toy_runner(tmp_path / 'runs_c', max_epochs=epoch, load_from=path, resume=True,
                         custom_hooks=[recorder])
    runner.train()
    assert runner.epoch == epoch
    saved = toy_run['states'][epoch]
    assert_same_state(recorder.state, saved, 'resumed')
    hub = runner.message_hub.log_scalars['train/loss']
    assert type(hub) is HistoryBuffer and hub.statistics('mean') == saved['message_hub']['log_scalars'][
        'train/loss'].mean()


def test_resume_without_a_file_takes_the_work_dirs_latest(toy_run, tmp_path):
    work_dir = tmp_path / 'runs_a_copy'
    shutil.copytree(toy_run['work_dir'], work_dir)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_2.pth'))
    recorder = _RecordStart()
    runner = _toy_runner(work_dir, resume=True, custom_hooks=[recorder])
    runner.train()
    assert runner.epoch == 2
    assert_same_state(recorder.state, toy_run['states'][2], 'resumed')


def test_a_fresh_process_loads_through_mmengine_once_mmmambavision_is_imported(toy_run):
    """What mmdet's and mmseg's own tools do: the config's custom_imports import mmmambavision, then mmengine loads."""
    code = (
        'import sys\n'
        'from mmengine.runner.checkpoint import CheckpointLoader\n'
        'try:\n'
        '    CheckpointLoader.load_checkpoint(sys.argv[1])\n'
        '    print("plain torch.load read it")\n'
        'except Exception as error:\n'
        '    print("without mmmambavision:", type(error).__name__)\n'
        'from mmengine.utils import import_modules_from_strings\n'
        "import_modules_from_strings(imports=['mmmambavision'], allow_failed_imports=False)\n"
        "print('epoch', CheckpointLoader.load_checkpoint(sys.argv[1])['meta']['epoch'])\n")
    out = subprocess.run([sys.executable, '-c', code, osp.join(toy_run['work_dir'], 'epoch_1.pth')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'without mmmambavision: UnpicklingError' in out.stdout and 'epoch 1' in out.stdout


# ------------------------------------------------------------------------------------------------ layouts


def test_published_imagenet_layout_with_namespace_loads(tmp_path):
    path = tmp_path / 'mambavision_tiny_1k.pth.tar'
    state = collections.OrderedDict(weight=torch.randn(3, 2), bias=torch.randn(3))
    torch.save({'epoch': 309, 'arch': 'mamba_vision_T', 'state_dict': state, 'version': 2, 'metric': 82.3,
                'args': argparse.Namespace(model='mamba_vision_T', lr=0.005, betas=(0.9, 0.999))}, path)
    checkpoint = CheckpointLoader.load_checkpoint(str(path))
    assert checkpoint['args'] == argparse.Namespace(model='mamba_vision_T', lr=0.005, betas=(0.9, 0.999))
    assert_same_state(checkpoint['state_dict'], state)


def test_mmdet_layout_with_message_hub_loads(tmp_path):
    buffer = HistoryBuffer(max_length=5)
    for value in (2.5, 1.5, 1.0):
        buffer.update(value)
    state = collections.OrderedDict([('backbone.w', torch.randn(2, 2)), ('neck.b', torch.randn(2))])
    meta = {'epoch': 36, 'iter': 1000, 'mmengine_version': '0.10.7', 'seed': np.int64(3), 'lr': np.float32(1e-4),
            'dataset_meta': {'classes': ('person', 'car'), 'palette': [(220, 20, 60), (0, 0, 142)]},
            'hist': np.arange(6, dtype=np.int16).reshape(2, 3), 'dtype': np.dtype('float16')}
    hub = {'log_scalars': {'train/loss': buffer}, 'runtime_info': {'epoch': 36, 'iter': 1000},
           'resumed_keys': {'train/loss': True, 'epoch': True}}
    path = tmp_path / 'cascade_mask_rcnn_mambavision_tiny_3x.pth'
    torch.save({'meta': meta, 'state_dict': state, 'message_hub': hub}, path)
    checkpoint = load_checkpoint_file(str(path), map_location='cpu')
    assert_same_state(checkpoint['meta'], meta, 'meta')
    assert_same_state(checkpoint['message_hub'], hub, 'message_hub')
    loaded = checkpoint['message_hub']['log_scalars']['train/loss']
    assert loaded.mean() == buffer.mean() and loaded.statistics('current') == 1.0


def test_legacy_and_plain_pickle_files_load(tmp_path):
    data = {'state_dict': {'w': torch.arange(3.)}, 'meta': {'epoch': 1}, 'hist': np.ones(2)}
    legacy = tmp_path / 'legacy.pth'
    torch.save(data, legacy, _use_new_zipfile_serialization=False)
    assert_same_state(load_checkpoint_file(str(legacy)), data)
    raw = pickle.dumps({'meta': {'epoch': 1}, 'hist': np.ones(2), 'c': collections.Counter('aab')}, protocol=4)
    assert_same_state(restricted_pickle.loads(raw), {'meta': {'epoch': 1}, 'hist': np.ones(2),
                                                'c': collections.Counter('aab')})


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))


# ------------------------------------------------------------------------------------------------ refused files


def _touch_code(marker):
    return f"open({str(marker)!r}, 'w').close()"


class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _spy(module, name, marker, monkeypatch):
    """Replace ``module.name`` by a function of that name that writes ``marker``: pickled by that name, it
    would run if the loader resolved the name."""
    def spy(*args, **kwargs):
        open(marker, 'w').close()
    spy.__module__, spy.__name__, spy.__qualname__ = module.__name__, name, name
    monkeypatch.setattr(module, name, spy)
    return spy


def _payloads(marker, monkeypatch):
    """``(payload object, refused name pattern)`` for each hostile callable; each writes ``marker`` if run."""
    import builtins
    return {
        'os.system': (_Reduce(os.system, f'touch {marker}'), r'(posix|os)\.system'),
        'subprocess.Popen': (_Reduce(subprocess.Popen, ['touch', str(marker)]), r'subprocess\.Popen'),
        'subprocess.call': (_Reduce(subprocess.call, ['touch', str(marker)]), r'subprocess\.call'),
        'builtins.eval': (_Reduce(builtins.eval, _touch_code(marker)), r'builtins\.eval'),
        'builtins.exec': (_Reduce(builtins.exec, _touch_code(marker)), r'builtins\.exec'),
        'torch.save': (_Reduce(torch.save, {'x': 1}, str(marker)), r'torch\.serialization\.save'),
        'torch.load': (_Reduce(_spy(torch.serialization, 'load', marker, monkeypatch), 'x.pth'),
                       r'torch\.serialization\.load'),
        'torch.hub.load': (_Reduce(_spy(torch.hub, 'load', marker, monkeypatch), 'repo', 'model'),
                           r'torch\.hub\.load'),
        # getattr on anything but HistoryBuffer: ndarray.tofile would write the marker
        'getattr(numpy.ndarray, tofile)': (_Reduce(np.ndarray.tofile, np.zeros(1), str(marker)),
                                          r"builtins\.getattr\(ndarray, 'tofile'\)"),
    }


PAYLOADS = ['os.system', 'subprocess.Popen', 'subprocess.call', 'builtins.eval', 'builtins.exec', 'torch.save',
            'torch.load', 'torch.hub.load', 'getattr(numpy.ndarray, tofile)']


@pytest.mark.parametrize('payload', PAYLOADS)
@pytest.mark.parametrize('layout', ['torch zip', 'torch legacy', 'raw pickle protocol 2', 'raw pickle protocol 5'])
def test_hostile_checkpoints_are_refused_by_name_and_never_run(tmp_path, monkeypatch, payload, layout):
    marker = tmp_path / 'marker'
    obj, refused = _payloads(marker, monkeypatch)[payload]
    checkpoint = {'state_dict': {'w': torch.zeros(2)}, 'meta': {'epoch': 1, 'x': obj}}
    path = tmp_path / 'hostile.pth'
    if layout == 'torch zip':
        torch.save(checkpoint, path)
    elif layout == 'torch legacy':
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({'meta': {'x': obj}}, protocol=int(layout[-1])))
    for load in (load_checkpoint_file, CheckpointLoader.load_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=refused) as error:
            load(str(path))
        assert isinstance(error.value, pickle.UnpicklingError)
        assert 'not part of a plain runner checkpoint' in str(error.value)
        assert 'It was not executed' in str(error.value)
    if layout.startswith('raw'):
        with pytest.raises(UnsafeCheckpointError, match=refused):
            restricted_pickle.loads(path.read_bytes())
    assert not marker.exists()


def test_every_refused_global_is_named_before_anything_is_loaded(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'hostile.pth'
    torch.save({'a': _Reduce(os.system, f'touch {marker}'), 'b': _Reduce(subprocess.call, ['touch', str(marker)]),
                'c': _Reduce(torch.save, {}, str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint_file(str(path))
    for name in ('system', 'subprocess.call', 'torch.serialization.save'):
        assert name in str(error.value)
    assert not marker.exists()


def _torch_zip_with_pickle(path, data):
    """A torch zip checkpoint whose data.pkl is ``data`` (raw pickle bytes written by hand)."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, 'w') as target:
        for entry in source.infolist():
            content = data if entry.filename.endswith('/data.pkl') else source.read(entry)
            target.writestr(entry, content)


def _getattr_os_system(marker):
    """Raw protocol-2 pickle of ``getattr(subprocess.os, 'system')('touch marker')``."""
    return (b'\x80\x02c__builtin__\ngetattr\ncsubprocess\nos\nX\x06\x00\x00\x00system\x86R'
            + b'X' + len(f'touch {marker}').to_bytes(4, 'little') + f'touch {marker}'.encode() + b'\x85R.')


def _getattr_reaching_os_through_an_allowed_object(marker):
    """``getattr(getattr(argparse.Namespace, '__init__'), '__globals__')``: walks from an allowed class to a
    module's globals; refused at the first getattr (Namespace is not a HistoryBuffer)."""
    return (b'\x80\x02c__builtin__\ngetattr\nq\x00h\x00cargparse\nNamespace\nX\x08\x00\x00\x00__init__\x86R'
            b'X\x0b\x00\x00\x00__globals__\x86R.')


@pytest.mark.parametrize('as_zip', [False, True])
def test_getattr_on_anything_but_history_buffer_is_refused(tmp_path, as_zip):
    marker = tmp_path / 'marker'
    for data, refused in ((_getattr_os_system(marker), r'subprocess\.os'),
                          (_getattr_reaching_os_through_an_allowed_object(marker),
                           r"builtins\.getattr\(Namespace, '__init__'\)")):
        path = tmp_path / 'hostile.pth'
        if as_zip:
            _torch_zip_with_pickle(path, data)
        else:
            path.write_bytes(data)
        with pytest.raises(UnsafeCheckpointError, match=refused):
            load_checkpoint_file(str(path))
        with pytest.raises(UnsafeCheckpointError, match=refused):
            restricted_pickle.loads(data)
    assert not marker.exists()


def test_a_hand_written_torch_zip_still_loads_its_data(tmp_path):
    """The helper above writes a valid torch zip: a plain pickle in it loads (so the refusals are the loader's)."""
    path = tmp_path / 'plain.pth'
    _torch_zip_with_pickle(path, pickle.dumps({'epoch': 3}, protocol=2))
    assert load_checkpoint_file(str(path)) == {'epoch': 3}


class _ForgedHistoryBuffer:
    """Pickles as a HistoryBuffer (NEWOBJ + BUILD), with the state given."""
    __class__ = property(lambda self: HistoryBuffer)  # what pickle checks before writing NEWOBJ

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        import copyreg
        return copyreg.__newobj__, (HistoryBuffer, ), self.state


def _buffer_state(**changes):
    state = dict(max_length=10, _log_history=np.array([1.0, 2.0]), _count_history=np.array([1, 1]),
                 statistics_methods=dict(min=HistoryBuffer.min, max=HistoryBuffer.max,
                                         current=HistoryBuffer.current, mean=HistoryBuffer.mean))
    state.update(changes)
    return state


def _forged_buffers(marker):
    methods = _buffer_state()['statistics_methods']
    return {
        'foreign callable by name': (
            _ForgedHistoryBuffer(_buffer_state(statistics_methods=dict(methods, min=os.system))),
            r'(posix|os)\.system'),
        'a method that is not a statistics method': (
            _ForgedHistoryBuffer(_buffer_state(statistics_methods=dict(methods, evil=HistoryBuffer.update))),
            r"getattr\(HistoryBuffer, 'update'\)"),
        'a statistics method under another name': (
            _ForgedHistoryBuffer(_buffer_state(statistics_methods=dict(methods, mean=HistoryBuffer.max))),
            r"statistics method 'mean'"),
        'an allowed global posing as a statistics method': (
            _ForgedHistoryBuffer(_buffer_state(statistics_methods=dict(methods, min=np.ndarray))),
            r"statistics method 'min'"),
        'getattr on something else inside its state': (
            _ForgedHistoryBuffer(_buffer_state(statistics_methods=dict(methods, min=np.ndarray.tofile))),
            r"builtins\.getattr\(ndarray, 'tofile'\)"),
        'an attribute a HistoryBuffer does not have': (
            _ForgedHistoryBuffer(_buffer_state(update=collections.Counter)),
            r"HistoryBuffer attribute 'update'"),
        'history that is not an array': (
            _ForgedHistoryBuffer(_buffer_state(_log_history=collections.Counter())),
            r'HistoryBuffer\._log_history of type Counter'),
        'a constructor call': (_Reduce(HistoryBuffer, [1.0], [1]), r'HistoryBuffer\(\.\.\.\)'),
    }


@pytest.mark.parametrize('case', ['foreign callable by name', 'a method that is not a statistics method',
                                  'a statistics method under another name',
                                  'an allowed global posing as a statistics method',
                                  'getattr on something else inside its state',
                                  'an attribute a HistoryBuffer does not have', 'history that is not an array',
                                  'a constructor call'])
def test_a_history_buffer_carrying_anything_but_its_data_is_refused(tmp_path, case):
    marker = tmp_path / 'marker'
    forged, refused = _forged_buffers(marker)[case]
    methods_before = dict(HistoryBuffer._statistics_methods)
    path = tmp_path / 'hub.pth'
    torch.save({'message_hub': {'log_scalars': {'loss': forged}}}, path)
    with pytest.raises(UnsafeCheckpointError, match=refused):
        load_checkpoint_file(str(path))
    assert HistoryBuffer._statistics_methods == methods_before  # the class's table is untouched
    assert not marker.exists()


def test_a_history_buffer_with_its_own_methods_loads(tmp_path):
    path = tmp_path / 'hub.pth'
    torch.save({'loss': _ForgedHistoryBuffer(_buffer_state())}, path)
    buffer = load_checkpoint_file(str(path))['loss']
    assert type(buffer) is HistoryBuffer and buffer.mean() == 1.5 and buffer.max_length == 10


def test_a_history_buffer_without_its_data_is_refused():
    data = b'\x80\x02cmmengine.logging.history_buffer\nHistoryBuffer\n)\x81.'  # NEWOBJ, no BUILD
    with pytest.raises(UnsafeCheckpointError, match='without their data'):
        restricted_pickle.loads(data)


def test_state_is_set_only_on_data_containers():
    """BUILD on an allowed function or class (here torch's _rebuild_tensor_v2 and argparse.Namespace) would
    let a file alter them for the whole process."""
    for target in (b'ctorch._utils\n_rebuild_tensor_v2\n', b'cargparse\nNamespace\n'):
        data = b'\x80\x02' + target + b'}X\x07\x00\x00\x00__doc__X\x03\x00\x00\x00pwnsb.'
        with pytest.raises(UnsafeCheckpointError, match='setting the state of a'):
            restricted_pickle.loads(data)
    assert torch._utils._rebuild_tensor_v2.__doc__ != 'pwn' and argparse.Namespace.__doc__ != 'pwn'


def test_a_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / 'scripted.pth'
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match='TorchScript'):
        load_checkpoint_file(str(path))


def test_the_unpickler_is_what_torch_load_is_given():
    assert restricted_pickle.Unpickler is CheckpointUnpickler
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)
    assert CheckpointLoader._get_checkpoint_loader('/any/local/file.pth').__module__ == 'mmmambavision.checkpoint'


# ------------------------------------------------------------------------------------------------ http(s)


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """A local HTTP server over ``tmp_path / 'served'``; torch hub's cache in ``tmp_path / 'hub'``."""
    import functools
    import http.server
    import threading
    served = tmp_path / 'served'
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield served, f'http://127.0.0.1:{server.server_address[1]}'
    torch.hub.set_dir(previous)
    server.shutdown()
    thread.join()


def test_a_runner_checkpoint_over_http_loads_and_a_hostile_one_is_refused(toy_run, tmp_path, http_server):
    from mmengine.runner import checkpoint as mmengine_checkpoint
    served, url = http_server
    shutil.copyfile(osp.join(toy_run['work_dir'], 'epoch_2.pth'), served / 'epoch_2.pth')
    checkpoint = CheckpointLoader.load_checkpoint(f'{url}/epoch_2.pth', map_location='cpu')
    assert_same_state(checkpoint['message_hub'], toy_run['states'][2]['message_hub'], 'message_hub')
    marker = tmp_path / 'marker'
    torch.save({'meta': _Reduce(os.system, f'touch {marker}')}, served / 'hostile.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'(posix|os)\.system'):
        CheckpointLoader.load_checkpoint(f'{url}/hostile.pth')
    # open-mmlab://, torchvision:// and mmcls:// download through mmengine's module-level load_from_http
    with pytest.raises(UnsafeCheckpointError, match=r'(posix|os)\.system'):
        mmengine_checkpoint.load_from_http(f'{url}/hostile.pth')
    assert not marker.exists()
