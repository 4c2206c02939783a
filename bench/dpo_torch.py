"""The PyTorch peer of `align bench dpo`: the same TRL-style DPO step on the same pairs and model shape.

A plain Mistral decoder (RMSNorm, rotate-half RoPE, GQA, SwiGLU, untied head), a padded concatenated batch
[chosen..., rejected...], full [B, T, V] logits, summed completion log-probs, sigmoid DPO loss, AdamW.
Usage: python3 bench/dpo_torch.py <pairs.jsonl> <batch_pairs> <steps> [warmup]   -> one JSON line
"""
import json, math, os, resource, sys, time
import torch

torch.set_num_threads(os.cpu_count() or 1)  # torch 1.13 picks 1 intra-op thread here; the peer gets both cores
import torch.nn.functional as F

cfg = dict(vocab=32000, hidden=256, inter=688, layers=4, heads=8, kv=2)  # PRESETS['tiny-bench']
hd = cfg['hidden'] // cfg['heads']
torch.manual_seed(0)
lin = lambda o, i: torch.nn.Parameter(torch.randn(o, i) * 0.02)
P = {'embed': lin(cfg['vocab'], cfg['hidden']), 'head': lin(cfg['vocab'], cfg['hidden']), 'norm': torch.nn.Parameter(torch.ones(cfg['hidden']))}
for l in range(cfg['layers']):
    P[f'{l}.q'] = lin(cfg['heads'] * hd, cfg['hidden']); P[f'{l}.k'] = lin(cfg['kv'] * hd, cfg['hidden'])
    P[f'{l}.v'] = lin(cfg['kv'] * hd, cfg['hidden']); P[f'{l}.o'] = lin(cfg['hidden'], cfg['heads'] * hd)
    P[f'{l}.g'] = lin(cfg['inter'], cfg['hidden']); P[f'{l}.u'] = lin(cfg['inter'], cfg['hidden']); P[f'{l}.d'] = lin(cfg['hidden'], cfg['inter'])
    P[f'{l}.n1'] = torch.nn.Parameter(torch.ones(cfg['hidden'])); P[f'{l}.n2'] = torch.nn.Parameter(torch.ones(cfg['hidden']))
opt = torch.optim.AdamW(P.values(), lr=1e-6, weight_decay=0.0, eps=1e-8)

def rms(x, w): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
def rot(x): a, b = x.chunk(2, -1); return torch.cat([-b, a], -1)

def forward(ids):
    B, T = ids.shape
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    f = torch.outer(torch.arange(T).float(), inv); emb = torch.cat([f, f], -1); cos, sin = emb.cos(), emb.sin()
    mask = torch.full((T, T), float('-inf')).triu(1)
    x = P['embed'][ids]
    for l in range(cfg['layers']):
        h = rms(x, P[f'{l}.n1'])
        q = (h @ P[f'{l}.q'].T).view(B, T, cfg['heads'], hd).transpose(1, 2)
        k = (h @ P[f'{l}.k'].T).view(B, T, cfg['kv'], hd).transpose(1, 2)
        v = (h @ P[f'{l}.v'].T).view(B, T, cfg['kv'], hd).transpose(1, 2)
        q = q * cos + rot(q) * sin; k = k * cos + rot(k) * sin
        g = cfg['heads'] // cfg['kv']; k = k.repeat_interleave(g, 1); v = v.repeat_interleave(g, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, -1) @ P[f'{l}.o'].T
        h = rms(x, P[f'{l}.n2'])
        x = x + (F.silu(h @ P[f'{l}.g'].T) * (h @ P[f'{l}.u'].T)) @ P[f'{l}.d'].T
    return rms(x, P['norm']) @ P['head'].T

rows = [json.loads(l) for l in open(sys.argv[1])]
bp, steps = int(sys.argv[2]), int(sys.argv[3]); warm = int(sys.argv[4]) if len(sys.argv) > 4 else 1
timed = 0.0; tokens = 0; pairs = 0
for s in range(warm + steps):
    chunk = [rows[(s * bp + j) % len(rows)] for j in range(bp)]
    seqs = [(r['prompt_ids'] + r['chosen_ids'], len(r['prompt_ids'])) for r in chunk] + [(r['prompt_ids'] + r['rejected_ids'], len(r['prompt_ids'])) for r in chunk]
    t0 = time.perf_counter()
    T = max(len(x) for x, _ in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long); lab = torch.full((len(seqs), T), -100)
    for i, (x, p) in enumerate(seqs):
        ids[i, :len(x)] = torch.tensor(x); lab[i, p:len(x)] = torch.tensor(x[p:])
    logits = forward(ids)[:, :-1]; labels = lab[:, 1:]
    m = labels != -100
    lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    lp = (lp * m).sum(-1)
    pc, pr = lp.chunk(2)
    rc = torch.tensor([r.get('reference_chosen_logp', 0.0) for r in chunk]); rr = torch.tensor([r.get('reference_rejected_logp', 0.0) for r in chunk])
    loss = -F.logsigmoid(0.1 * ((pc - pr) - (rc - rr))).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if s >= warm:
        timed += time.perf_counter() - t0
        tokens += sum(len(r['prompt_ids']) + len(r['chosen_ids']) + len(r['rejected_ids']) for r in chunk); pairs += bp
print(json.dumps({'bench': 'dpo', 'backend': f'pytorch {torch.__version__} ({torch.get_num_threads()} threads)', 'batch_pairs': bp, 'steps': steps,
                  'pairs_per_second': round(pairs / timed, 3), 'tokens_per_second': round(tokens / timed), 'step_ms': round(1000 * timed / steps),
                  'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
