"""What the command-line tools share: checkpoint loading, image files, sampling and FID statistics.

checkpoints  tokenizer / generator parameters from a training workdir or a converted parameter dir
images       folders of PNG/JPEG files <-> float32 [N, S, S, 3] arrays, grids, PNG writing
generate     one `sample(rng, labels)` per generator kind (GPT + KV cache, MaskGIT, MAR)
fid_stats    streaming feature statistics of image batches, folders and saved `.npz` statistics
"""
