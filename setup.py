from setuptools import find_packages, setup

setup(
    name='mmmambavision',
    version='0.1.0',
    description='MambaVision backbones for OpenMMLab (mmdet / mmseg), weight-compatible with the published models',
    packages=find_packages(include=['mmmambavision', 'mmmambavision.*']),
    python_requires='>=3.9',
    install_requires=['torch>=2.1', 'mmengine>=0.10'],
    extras_require={
        'det': ['mmcv==2.1.0', 'mmdet==3.3.0', 'pycocotools>=2.0.9'],
        'seg': ['mmcv==2.1.0', 'mmsegmentation==1.2.2', 'ftfy', 'regex'],
        'onnx': ['onnx==1.23.2', 'onnxruntime==1.31.1', 'onnxscript==0.7.2'],  # tools/deployment/export_onnx.py
        'tests': ['pytest'],
    },
)
