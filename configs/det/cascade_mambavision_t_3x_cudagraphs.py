# The 3x recipe of cascade_mambavision_t_3x.py, trained faster: the backbone's hybrid stages are compiled with
# torch.compile's 'reduce-overhead' mode, which records their forward and backward as CUDA graphs in the first
# steps and replays them after (their shapes are fixed by the 112/56 windows, whatever the image size). Same
# weights, same outputs to float rounding; costs the compile in the first iterations (about a minute with an
# empty inductor cache). See docs/backbone.md, "Training from CUDA graphs", and docs/benchmarks.md.
_base_ = './cascade_mambavision_t_3x.py'

model = dict(backbone=dict(compile=dict(mode='reduce-overhead')))
