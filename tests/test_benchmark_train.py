"""tools/analysis_tools/benchmark_train.py: the warm-up rule, mmengine's logs, the table, the arguments, and (slow
tier) one tiny training through the tool on CPU."""
import json
import os.path as osp
import statistics

import pytest

import benchmark_train as bt
from analysis_tools_cli import REPO, run_tool

DEMO = 'configs/det/demo_cascade_mambavision_t_synthcoco.py'


def steps(slow: int, total: int, slow_s: float = 1.0, fast_s: float = 0.5, jitter: float = 0.02):
    """``slow`` iterations of ``slow_s``, then ``fast_s`` with a deterministic +-jitter pattern."""
    pattern = [1 + jitter, 1 - jitter, 1, 1 + jitter / 2, 1 - jitter / 2]
    return [slow_s] * slow + [fast_s * pattern[i % len(pattern)] for i in range(total - slow)]


# ------------------------------------------------------------------------------------------------------ warm-up rule
def test_a_slow_start_of_20_iterations_is_a_warm_up_of_20():
    # A rolling median looking past the change point (windows that straddle it) would say 16 or 25.
    assert bt.warmup_iterations(steps(20, 200)) == 20


def test_a_later_isolated_slow_iteration_does_not_move_the_warm_up():
    times = steps(20, 200)
    times[100] = times[101] = 3.0  # two slow iterations (a data stall), less than half a window
    assert bt.warmup_iterations(times) == 20


def test_steady_from_the_start_has_no_warm_up():
    assert bt.warmup_iterations(steps(0, 200)) == 0


def test_a_gradual_decay_settles_where_it_comes_within_the_tolerance():
    times = [0.5 + 0.5 * 0.8 ** i for i in range(200)]
    # 0.5 * 0.8**i <= 10% of ~0.5 from i = 11 on (0.8**10 = 0.107, 0.8**11 = 0.086)
    assert bt.warmup_iterations(times, window=10, tolerance=0.1) == 11
    assert bt.warmup_iterations(times, window=10, tolerance=0.2) == 8  # 0.8**8 = 0.168, 0.8**7 = 0.210


def test_a_run_that_keeps_slowing_down_never_settles():
    times = [0.5 + 0.01 * i for i in range(200)]
    assert bt.warmup_iterations(times) is None
    row = bt.summarise([dict(iter=i + 1, time=t, data_time=0.0) for i, t in enumerate(times)], 2, 1)
    assert not row['settled'] and row['warmup_iters'] is None and row['steady_iters'] == 100


def test_warm_up_rule_arguments_are_checked():
    with pytest.raises(ValueError, match='window'):
        bt.warmup_iterations([1.0, 1.0], window=0)
    assert bt.warmup_iterations([]) is None


def test_summary_of_a_run():
    times = steps(20, 200)
    records = [dict(iter=i + 1, time=t, data_time=0.1 * t, memory=1000 + i, loss=1.0, loss_scale=None)
               for i, t in enumerate(times)]
    records[5]['loss'] = float('nan')
    row = bt.summarise(records, batch_per_gpu=2, gpus=2)
    assert row['iterations'] == 200 and row['warmup_iters'] == 20
    assert row['warmup_s'] == pytest.approx(20.0)
    assert row['s_per_iter'] == pytest.approx(statistics.median(times[20:]), abs=1e-5)
    assert row['first_iter_s'] == 1.0
    assert row['mean_s_per_iter_last_half'] == pytest.approx(statistics.mean(times[100:]), abs=1e-5)
    assert row['images_per_step'] == 4
    assert row['images_per_s'] == pytest.approx(4 / statistics.median(times[20:]), rel=1e-4)
    assert row['data_time_share'] == pytest.approx(0.1, abs=1e-4)
    assert row['peak_memory_mb'] == 1199
    assert row['nonfinite_losses'] == 1
    assert row['new_shape_iters'] is None and row['s_per_iter_seen_shapes'] is None  # no InputShapeHook fields


def test_iterations_on_new_shapes_are_timed_apart():
    # Every 7th iteration meets a new input shape and takes 3x longer; the others run at the steady pace.
    times = steps(20, 200)
    flags = [i == 0 or i % 7 == 3 for i in range(200)]
    times = [3 * t if flag and i else t for i, (t, flag) in enumerate(zip(times, flags))]
    records = [dict(iter=i + 1, time=t, data_time=0.0, new_shape=flag) for i, (t, flag) in enumerate(zip(times, flags))]
    row = bt.summarise(records, batch_per_gpu=2, gpus=1)
    new = [t for i, (t, flag) in enumerate(zip(times, flags)) if flag and i]
    assert row['new_shape_iters'] == len(new) == 29  # i = 3, 10, ..., 199
    assert row['mean_s_new_shape'] == pytest.approx(statistics.mean(new), abs=1e-5)
    seen = [t for t, flag in zip(times[100:], flags[100:]) if not flag]  # the last half
    assert row['s_per_iter_seen_shapes'] == pytest.approx(statistics.median(seen), abs=1e-5)
    assert row['s_per_iter_seen_shapes'] == pytest.approx(0.5, abs=0.011)  # the new-shape iterations left out

    ref = dict(row, config='ref.py', gpus=1, s_per_iter_seen_shapes=0.6)
    mine = dict(row, config='a.py', label='a', gpus=1, wall_s=1.0)
    bt.add_ratios([mine, ref], 'ref.py')
    assert mine['vs_reference_seen'] == pytest.approx(0.6 / row['s_per_iter_seen_shapes'], abs=1e-3)
    line = bt.table([mine], 'ref')[2]
    assert f'| 29 ({statistics.mean(new):.3f}) | {row["s_per_iter_seen_shapes"]:.3f} (' in line


def test_new_shape_flags_mark_first_occurrences_only():
    shapes = [(2, 3, 800, 1344), (2, 3, 800, 1344), (1, 3, 800, 1344), (2, 3, 640, 1344), (1, 3, 800, 1344)]
    assert bt.new_shape_flags(shapes) == [True, False, True, True, False]


def test_replay_adds_the_new_shape_figures_and_keeps_the_rest(tmp_path, monkeypatch):
    # A result file as the tool writes it (two one-GPU rows, one 2-GPU row), the loader replay faked: every 4th
    # iteration a new shape. The replay fills the new-shape columns and leaves every other figure as measured.
    times = steps(0, 40)
    times = [2.0 * t if i % 4 == 0 else t for i, t in enumerate(times)]
    per = dict(iter=list(range(1, 41)), time=times, data_time=[0.0] * 40, memory=[100] * 40)

    def row(config, gpus):
        return dict(config=config, label=config[:-3], gpus=gpus, images_per_step=2 * gpus, wall_s=30.0,
                    per_iteration=dict(per), loss_scale_drops=3, s_per_iter=0.5, images_per_s=4.0, settled=True,
                    warmup_s=0.0, warmup_iters=0, iterations=40, steady_iters=40, data_time_share=0.0,
                    peak_memory_mb=100, nonfinite_losses=0)
    content = dict(device='GPU', date='2026-12-01', commit='abc', reference='ref', run_options=[],
                   data=dict(root=str(tmp_path / 'data'), num_images=2, image_size=[64, 64]),
                   records=[row('a.py', 1), row('ref.py', 1), row('a.py', 2)])
    path = tmp_path / 'result.json'
    path.write_text(json.dumps(content))
    monkeypatch.setattr(bt, 'ensure_data', lambda *a: 'data')
    replayed = []
    monkeypatch.setattr(bt, 'replay_shapes', lambda config, options, iters: replayed.append(config) or [
        (2, 3, 32 * (i // 4 + 1), 64) if i % 4 == 0 else (2, 3, 32, 64) for i in range(iters)])
    out = tmp_path / 'replayed.json'
    bt.main(['--replay-shapes', str(path), '--out', str(out)])
    a, ref, two = json.loads(out.read_text())['records']
    assert [osp.basename(c) for c in replayed] == ['a.py', 'ref.py']  # not the 2-GPU row
    assert a['new_shape_iters'] == 9 and a['mean_s_new_shape'] == pytest.approx(statistics.mean(times[4::4]), 1e-4)
    assert a['s_per_iter_seen_shapes'] == pytest.approx(
        statistics.median(t for i, t in enumerate(times[20:], 20) if i % 4), abs=1e-5)
    assert a['vs_reference_seen'] == 1.0 and a['per_iteration']['input_h'][4] == 64
    assert a['loss_scale_drops'] == 3 and a['s_per_iter'] == 0.5  # as measured
    assert a['replay'] == 'new-shape flags from the replay' and two['replay'].startswith('not replayed')
    assert 'new_shape_iters' not in two


# --------------------------------------------------------------------------------------------------------- the logs
def test_reads_mmengine_scalars_json(tmp_path):
    path = tmp_path / 'scalars.json'
    lines = [
        dict(lr=1e-4, data_time=0.2, loss=2.0, time=1.5, iter=1, memory=5000, step=1),
        dict(lr=1e-4, data_time=0.01, loss=1.9, time=0.5, iter=2, memory=5100, step=2, loss_scale=512.0),
        dict(coco_bbox_mAP=0.1, step=2),  # a validation record: no time
        dict(lr=1e-4, data_time=0.01, loss=1.8, time=0.4, iter=3, memory=5050, step=3, loss_scale=256.0),
    ]
    for line, flag in zip(lines[:2] + lines[3:], (1.0, 0.0, 1.0)):
        line.update(new_shape=flag, input_h=800.0, input_w=1024.0)
    path.write_text('\n'.join(json.dumps(line) for line in lines) + '\n\n')
    records = bt.read_scalars(str(path))
    assert [r['iter'] for r in records] == [1, 2, 3]
    assert [r['time'] for r in records] == [1.5, 0.5, 0.4]
    assert [r['memory'] for r in records] == [5000, 5100, 5050]
    assert [r['new_shape'] for r in records] == [True, False, True]
    row = bt.summarise(records, 2, 1)
    assert row['loss_scale_drops'] == 1 and row['peak_memory_mb'] == 5100


def test_reads_mmengine_text_log(tmp_path):
    path = tmp_path / 'run.log'
    path.write_text(
        '11/30 18:21:00 - mmengine - INFO - Iter(train) [  1/200]  base_lr: 2.0e-06 lr: 2.0e-06  eta: 0:01:00  '
        'time: 15.1205  data_time: 0.0859  memory: 6021  loss: 9.5098  loss_rpn_cls: 0.7002  s0.loss_cls: 4.2782\n'
        'something else\n'
        '11/30 18:21:11 - mmengine - INFO - Iter(train) [  2/200]  base_lr: 6.0e-06 lr: 6.0e-06  eta: 0:00:39  '
        'time: 0.3894  data_time: 0.0177  memory: 6100  loss: nan  loss_scale: 65536.0000  input_h: 800.0000  '
        'input_w: 1024.0000  new_shape: 1.0000\n')
    records = bt.read_text_log(str(path))
    assert [(r['iter'], r['time'], r['data_time'], r['memory']) for r in records] == [
        (1, 15.1205, 0.0859, 6021), (2, 0.3894, 0.0177, 6100)]
    assert records[0]['loss'] == 9.5098 and records[1]['loss_scale'] == 65536.0
    assert records[0]['new_shape'] is None and records[1]['new_shape'] is True
    assert bt.summarise(records, 2, 1)['nonfinite_losses'] == 1


def test_finds_the_log_of_the_new_run_only(tmp_path):
    for stamp in ('20260101_000000', '20260102_000000'):
        (tmp_path / stamp / 'vis_data').mkdir(parents=True)
        (tmp_path / stamp / 'vis_data' / 'scalars.json').write_text('')
    scalars, text = bt.find_log(str(tmp_path), before=['20260102_000000'])
    assert scalars == str(tmp_path / '20260101_000000' / 'vis_data' / 'scalars.json') and text is None
    assert bt.find_log(str(tmp_path), before=['20260101_000000', '20260102_000000']) == (None, None)
    (tmp_path / '20260103_000000').mkdir()
    (tmp_path / '20260103_000000' / '20260103_000000.log').write_text('')
    assert bt.find_log(str(tmp_path), before=[]) == (None, str(tmp_path / '20260103_000000' / '20260103_000000.log'))


# -------------------------------------------------------------------------------------------------------- the table
def test_ratios_and_table():
    rows = []
    for config, gpus, s in (('a.py', 1, 0.5), ('ref.py', 1, 0.4), ('a.py', 2, 0.55), ('ref.py', 2, 0.5)):
        records = [dict(iter=i + 1, time=t, data_time=0.0) for i, t in enumerate(steps(5, 50, fast_s=s, jitter=0))]
        row = dict(config=config, label=config[:-3], gpus=gpus, wall_s=60.0)
        row.update(bt.summarise(records, 2, gpus))
        rows.append(row)
    bt.add_ratios(rows, 'ref.py')
    assert rows[0]['vs_reference'] == pytest.approx(0.8) and rows[1]['vs_reference'] == 1.0
    assert rows[2]['vs_reference'] == pytest.approx(0.5 / 0.55, abs=1e-3)
    assert rows[2]['scaling'] == pytest.approx(0.5 / 0.55, abs=1e-3) and rows[0]['scaling'] == 1.0
    lines = bt.table(rows + [dict(label='b', gpus=1, error='exit status 1')], 'ref')
    assert lines[0].startswith('| config | GPUs |') and '| vs ref |' in lines[0]
    assert lines[2] == ('| a | 1 | 2 | 50 | 1.0 | 5.0 (5) | 0.500 | 0.500 | - | - | 4.00 | 0.0% | - | 0.80x | 1.00 '
                        '| 60 |')
    assert all(line.count('|') == lines[0].count('|') for line in lines)
    assert 'failed: exit status 1' in lines[-1]


def test_run_options_make_an_iteration_based_run_of_the_3x_config():
    cfg = bt.load_config(osp.join(REPO, 'configs/det/cascade_mambavision_t_3x.py'),
                         bt.run_options(7, '/data/x') + ['train_dataloader.num_workers=4'])
    assert dict(cfg.train_cfg) == dict(type='IterBasedTrainLoop', max_iters=7)
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
    assert cfg.default_hooks.checkpoint is None and cfg.default_hooks.logger.interval == 1
    assert cfg.log_processor.window_size == 1 and cfg.log_processor.by_epoch is False
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    assert cfg.train_dataloader.dataset.data_root == '/data/x/'
    assert cfg.train_dataloader.num_workers == 4  # the user's options come last
    assert cfg.model.backbone.init_cfg is None
    assert dict(cfg.default_hooks.input_shape) == dict(type='InputShapeHook')
    # what the runs keep: the recipe's pipeline, AMP, SyncBN heads, 2 images per GPU
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.train_dataloader.batch_size == 2
    assert cfg.model.roi_head.bbox_head[0].norm_cfg.type == 'SyncBN'
    assert any(t.type == 'RandomChoice' for t in cfg.train_dataloader.dataset.pipeline)


def test_data_is_generated_once_and_reused(tmp_path):
    root = str(tmp_path / 'data')
    assert bt.ensure_data(root, 2, (48, 64)).startswith('generated')
    with open(osp.join(root, 'annotations', 'instances_train2017.json')) as f:
        images = json.load(f)['images']
    assert [(i['height'], i['width']) for i in images] == [(48, 64)] * 2
    assert bt.ensure_data(root, 2, (48, 64)).startswith('reused')
    with pytest.raises(SystemExit, match='holds a generated set of 2 images of 48x64, not --num-images 3'):
        bt.ensure_data(root, 3, (48, 64))


def test_the_swin_t_config_is_the_3x_recipe_with_mmdets_swin_t():
    from mmengine.registry import MODELS, init_default_scope

    import mmmambavision  # noqa: F401
    cfg = bt.load_config(osp.join(REPO, 'configs/det/cascade_swin_t_3x.py'), [])
    ours = bt.load_config(osp.join(REPO, 'configs/det/cascade_mambavision_t_3x.py'), [])
    backbone = cfg.model.backbone
    assert backbone.type == 'SwinTransformer' and backbone.init_cfg is None and 'arch' not in backbone
    assert (backbone.embed_dims, backbone.depths, backbone.num_heads, backbone.window_size) == (
        96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    assert backbone.drop_path_rate == 0.2 and backbone.patch_norm and backbone.convert_weights
    assert cfg.model.neck.in_channels == [96, 192, 384, 768]
    for key in ('roi_head', 'rpn_head', 'train_cfg', 'test_cfg', 'type'):
        assert cfg.model[key] == ours.model[key], key
    for key in ('train_dataloader', 'train_cfg', 'param_scheduler', 'auto_scale_lr', 'custom_hooks'):
        assert cfg[key] == ours[key], key
    assert cfg.optim_wrapper.optimizer == ours.optim_wrapper.optimizer
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['relative_position_bias_table'] == dict(decay_mult=0.)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'SwinTransformer'
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(85.63e6, rel=1e-3)  # the Swin paper's 86 M


def test_visible_devices():
    assert bt.visible_devices(2, None) == '0,1'
    assert bt.visible_devices(1, '3,5') == '3'
    assert bt.visible_devices(2, '3, 5,6') == '3,5'


# ---------------------------------------------------------------------------------------------------- the arguments
@pytest.mark.parametrize('argv, message', [
    (['--launcher', 'none', '--gpus', '1', '2'], 'argument --gpus: --launcher none runs one process, so the only '
     'allowed value is 1'),
    (['--gpus', '0'], 'argument --gpus: expected a positive int'),
    (['--gpus', '1', '1'], 'argument --gpus: each count once'),
    (['--reference', '2'], 'argument --reference: expected an index 0..1 or one of the --configs '
     '(configs/det/cascade_mambavision_t_3x.py, configs/det/cascade_swin_t_3x.py)'),
    (['--reference', 'configs/det/cascade_mambavision_s_3x.py'], 'argument --reference: expected an index'),
    (['--configs', 'configs/det/missing.py'], "argument --configs: no such file 'configs/det/missing.py'"),
    (['--configs', DEMO, DEMO], 'is given twice'),
    (['--launcher', 'slurm'], "argument --launcher: invalid choice: 'slurm' (choose from 'pytorch', 'none')"),
    (['--image-size', '16', '16'], 'argument --image-size: expected H W, two ints of at least 32'),
    (['--out', 'result.csv'], 'argument --out: the file name must end in .json'),
    (['--cfg-options', 'train_cfg'], 'argument --cfg-options: expected KEY=VALUE'),
    (['--tolerance', '0'], 'argument --tolerance: expected a positive number'),
    (['--replay-shapes', 'missing.json'], "argument --replay-shapes: no such file 'missing.json'"),
    (['--replay-shapes', DEMO, '--out', 'x.csv'], 'argument --out: the file name must end in .json'),
])
def test_argument_errors_name_the_argument(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        bt.parse_args(argv)
    assert message in capsys.readouterr().err


def test_reference_by_index_or_path(monkeypatch):
    monkeypatch.chdir(REPO)
    assert bt.parse_args(['--reference', '0'])[0].reference_index == 0
    assert bt.parse_args(['--reference', 'configs/det/cascade_swin_t_3x.py'])[0].reference_index == 1
    assert bt.parse_args([])[0].reference_index is None


def test_dry_run_prints_one_dist_train_command_per_run(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    assert bt.main(['--dry-run', '--iters', '50']) == []
    out = capsys.readouterr().out.strip().splitlines()
    assert 'reference for the ratios: cascade_swin_t_3x' in out[0]
    commands = out[1:]
    assert len(commands) == 4
    assert commands[0].startswith('CUDA_VISIBLE_DEVICES=0 PORT=<free port> bash tools/dist_train.sh '
                                  'configs/det/cascade_mambavision_t_3x.py 1 --work-dir '
                                  'work_dirs/benchmark_train/cascade_mambavision_t_3x_1gpu --cfg-options ')
    assert 'configs/det/cascade_swin_t_3x.py 1 ' in commands[1]
    assert commands[3].startswith('CUDA_VISIBLE_DEVICES=0,1 PORT=<free port> bash tools/dist_train.sh '
                                  'configs/det/cascade_swin_t_3x.py 2 ')
    assert all('train_cfg.max_iters=50 ' in c for c in commands)


def test_pytorch_launcher_without_gpus_is_refused_before_anything_runs(capsys, monkeypatch, tmp_path):
    torch = pytest.importorskip('torch')
    if torch.cuda.is_available():
        pytest.skip('a CUDA machine')
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        bt.main(['--work-dir', str(tmp_path), '--configs', DEMO])
    assert 'argument --launcher: pytorch (tools/dist_train.sh, torchrun)' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no data generated


def test_a_failed_run_stops_the_tool_with_the_log_tail(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(bt, 'ensure_data', lambda *args: 'data: none needed')
    monkeypatch.setattr(bt, 'run_command', lambda *args: ['bash', '-c', 'echo building; echo "KeyError: boom" >&2; '
                                                          'exit 3'])
    out = tmp_path / 'r.json'
    with pytest.raises(SystemExit) as error:
        bt.main(['--launcher', 'none', '--configs', DEMO, '--work-dir', str(tmp_path), '--out', str(out)])
    message = str(error.value)
    assert message.startswith('run 1/1 failed (exit status 3): demo_cascade_mambavision_t_synthcoco on 1 GPU(s)')
    assert 'building\nKeyError: boom' in message
    (row,) = json.loads(out.read_text())['records']
    assert row['error'] == 'exit status 3'


def test_a_run_past_its_timeout_is_stopped(tmp_path):
    with pytest.raises(bt.RunFailed, match='timed out after 1 s'):
        bt.launch(['bash', '-c', 'echo started; sleep 30'], {'PATH': '/usr/bin:/bin'}, str(tmp_path / 'log'), 1)
    assert 'started' in (tmp_path / 'log').read_text()


# ------------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_cpu_training_through_the_tool(tmp_path):
    out = tmp_path / 'result.json'
    iters = 4
    result = run_tool('tools/analysis_tools/benchmark_train.py', '--launcher', 'none', '--gpus', '1',
                      '--iters', str(iters), '--configs', DEMO, '--image-size', '128', '160', '--num-images', '4',
                      '--work-dir', str(tmp_path / 'wd'), '--out', str(out), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith('|')]
    assert len(lines) == 3 and lines[0].startswith('| config | GPUs |')
    assert lines[2].startswith(f'| demo_cascade_mambavision_t_synthcoco | 1 | 2 | {iters} | ')
    assert '| 1.00x |' in lines[2]  # its own reference

    content = json.loads(out.read_text())
    assert content['launcher'] == 'none' and content['iters'] == iters and content['device'] == 'cpu'
    assert content['configs'] == [DEMO] and content['gpus'] == [1]
    assert content['table'][:3] == lines
    (row,) = content['records']
    times = row['per_iteration']['time']
    assert row['per_iteration']['iter'] == list(range(1, iters + 1))
    assert len(times) == iters and all(t > 0 for t in times)
    assert all(d >= 0 for d in row['per_iteration']['data_time'])
    warmup = bt.warmup_iterations(times, content['warmup_rule']['window'], content['warmup_rule']['tolerance'])
    assert row['settled'] == (warmup is not None)
    if warmup is not None:
        assert row['warmup_iters'] == warmup
        assert row['warmup_s'] == pytest.approx(sum(times[:warmup]), abs=1e-3)
        assert row['s_per_iter'] == pytest.approx(statistics.median(times[warmup:]), abs=1e-4)
    assert row['images_per_s'] == pytest.approx(2 / row['s_per_iter'], rel=1e-3)
    assert row['wall_s'] > sum(times) and row['peak_memory_mb'] is None  # no CUDA: no memory field
    assert osp.isfile(row['log']) and 'Iter(train) [4/4]' in open(row['log']).read()
    # InputShapeHook ran in the training: the first iteration met a new shape, and the count matches the flags
    flags = row['per_iteration']['new_shape']
    assert len(flags) == iters and flags[0] is True and all(isinstance(f, bool) for f in flags)
    assert row['new_shape_iters'] == sum(flags[1:])
    assert all(h >= 128 and w >= 128 for h, w in zip(row['per_iteration']['input_h'], row['per_iteration']['input_w']))

    # --replay-shapes: the run's data loader replayed without the model gives the shapes and flags the run logged
    replayed = tmp_path / 'replayed.json'
    result = run_tool('tools/analysis_tools/benchmark_train.py', '--replay-shapes', str(out), '--out', str(replayed),
                      timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    again = json.loads(replayed.read_text())
    (row2,) = again['records']
    assert row2['replay'] == 'agrees with the shapes and flags the run logged (InputShapeHook)', row2['replay']
    for key in ('new_shape', 'input_h', 'input_w', 'time'):
        assert row2['per_iteration'][key] == row['per_iteration'][key], key
    assert 'replayed_shapes' in again and again['replayed_shapes']['command'].startswith(
        'python tools/analysis_tools/benchmark_train.py --replay-shapes')
