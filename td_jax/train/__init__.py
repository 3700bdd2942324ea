"""Experiment framework: configs, meshes, optimizers, Orbax checkpoints, the training loop.

    config.py          schema + validation (unknown keys / wrong types named by dotted key)
    mesh.py            ("data", "fsdp", "tensor") mesh from config, logical-axis rules -> shardings
    optim.py           warm-up + cosine, weight decay, clipping, per-group LRs, frozen groups
    checkpoint.py      Orbax CheckpointManager: state + Grain iterator + config, latest-N + best-N, SHA-256 verified
    metrics.py         metrics.jsonl, TensorBoard (tensorboardX), console progress (process 0)
    data.py            Grain train / eval iterators for in-memory sources, host -> global arrays
    task.py            the Task interface the trainer drives, and the task registry
    trainer.py         sharded train / eval steps, train_and_evaluate, compile_train_step
    video_qa.py        task "video_qa": VideoLLM + compressor on multiple-choice video QA
    synthetic_task.py  task "synthetic_mc": an MLP on synthetic multiple choice (framework checks)
"""
