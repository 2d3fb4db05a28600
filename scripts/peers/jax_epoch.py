"""The fastest peer of `netc bench specs/baseline.net`: JAX training the same network with the
whole epoch as one XLA program (`lax.scan` over the batches), on data of the real shape.

The model is `specs/baseline.net`: 3,072 inputs scaled to [0, 1], 20 dense layers of 100 units
with He normal initialization and ELU, a dense softmax output of 10 classes, cross-entropy,
Nadam (optax, learning rate 5e-5), 45,000 training images per epoch. Data are random pixels
and labels: the time of an epoch does not depend on them.

Usage: python3 scripts/peers/jax_epoch.py [--batch 32] [--epochs 4]
Prints one line per epoch (the first includes XLA's compilation) and a JSON line with the
median of the epochs after the first. Threads: XLA's CPU backend uses every core by default.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

IMAGES = 45_000
FEATURES = 3072
CLASSES = 10
WIDTH = 100
DEPTH = 20


def init(key):
    sizes = [FEATURES] + [WIDTH] * DEPTH + [CLASSES]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        # Keras' he_normal: a truncated normal with stddev sqrt(2 / fan_in).
        std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
        w = std * jax.random.truncated_normal(sub, -2.0, 2.0, (fan_in, fan_out), jnp.float32)
        params.append((w, jnp.zeros((fan_out,), jnp.float32)))
    return params


def loss_fn(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = jax.nn.elu(h @ w + b)
    w, b = params[-1]
    logits = h @ w + b
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    steps = IMAGES // args.batch

    key = jax.random.PRNGKey(42)
    key, k_x, k_y = jax.random.split(key, 3)
    pixels = jax.random.randint(k_x, (steps, args.batch, FEATURES), 0, 256, jnp.uint8)
    labels = jax.random.randint(k_y, (steps, args.batch), 0, CLASSES, jnp.int32)

    params = init(key)
    opt = optax.nadam(5e-5)
    state = opt.init(params)

    def step(carry, batch):
        params, state = carry
        x = batch[0].astype(jnp.float32) / 255.0
        loss, grads = jax.value_and_grad(loss_fn)(params, x, batch[1])
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def epoch(params, state, pixels, labels):
        (params, state), losses = jax.lax.scan(step, (params, state), (pixels, labels))
        return params, state, losses.mean()

    times = []
    for e in range(args.epochs):
        started = time.perf_counter()
        params, state, loss = epoch(params, state, pixels, labels)
        loss.block_until_ready()
        seconds = time.perf_counter() - started
        times.append(seconds)
        print(f"epoch {e + 1}: {seconds:.2f} s (loss {float(loss):.4f})", flush=True)
    rest = times[1:] or times
    print(
        json.dumps(
            {
                "peer": f"jax {jax.__version__}, lax.scan epoch",
                "batch": args.batch,
                "sec_per_epoch": statistics.median(rest),
                "epochs": times,
            }
        )
    )


if __name__ == "__main__":
    main()
