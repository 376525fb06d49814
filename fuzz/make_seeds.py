#!/usr/bin/env python3
"""Writes small valid seed inputs for the fuzz targets (scripts/fuzz.sh): OUT/<target>/<name>.
`make_seeds.py shrink-safetensors SRC DST` instead writes a small copy of a real checkpoint's layout.

Hand-built so the seeds stay a few hundred bytes (fast to mutate) while covering each format's features:
safetensors with every dtype, metadata, scalars and empty tensors; torch.save-style zips (stored entries,
64-byte aligned data, optional zip64 end records) whose data.pkl uses protocol 2 and 4 framing; config.json
and tokenizer_config.json variants. Python's own pickler writes the pickles, against stand-in torch globals,
so the opcodes are what a real pickler emits rather than what tpserve's writer emits.
"""
import collections
import json
import os
import pickle
import struct
import sys
import types
import zlib



def shrink_safetensors(src, dst):
    """Rewrites a real .safetensors file with its own names, dtypes, metadata and tensor order but every
    dimension cut to at most 2, so the seed keeps the real header's shape while staying a few KB."""
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    metadata = header.pop("__metadata__", None)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    size = {"F32": 4, "BF16": 2, "F16": 2}
    tensors = {}
    for i, name in enumerate(order):
        e = header[name]
        shape = [min(d, 2) for d in e["shape"]]
        numel = 1
        for d in shape:
            numel *= d
        tensors[name] = (e["dtype"], shape, bytes((i + j) % 251 + 1 for j in range(numel * size[e["dtype"]])))
    with open(dst, "wb") as f:
        f.write(safetensors(tensors, metadata))


OUT = sys.argv[1]  # or "shrink-safetensors" SRC DST: only that, see the end of the safetensors section


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ---- safetensors: u64 header length, JSON header, data section.
def safetensors(tensors, metadata=None):  # dict keeps insertion order: data laid out in that order
    header, blob = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


if OUT == "shrink-safetensors":
    shrink_safetensors(sys.argv[2], sys.argv[3])
    sys.exit(0)

f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", "f32_1d", safetensors({"model.norm.weight": ("F32", [4], f32(1, 2, 3, 4))}, {"format": "pt"}))
put("safetensors", "mixed", safetensors({
    "model.embed_tokens.weight": ("BF16", [3, 2], bytes(range(1, 13))),
    "model.layers.0.mlp.up_proj.weight": ("F16", [2, 2], bytes(range(20, 28))),
    "lm_head.weight": ("F32", [2, 1], f32(0.5, -0.5)),
}))
put("safetensors", "scalar_and_empty", safetensors({"s": ("F32", [], f32(7)), "e": ("BF16", [0, 5], b"")}))
put("safetensors", "empty_header", safetensors({}))

# ---- torch.save-style pickles, written by Python's pickler against stand-in torch globals.
torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
for cls in ("FloatStorage", "BFloat16Storage", "HalfStorage"):
    setattr(torch_mod, cls, type(cls, (), {"__module__": "torch"}))
torch_mod._utils = utils_mod
sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

    def __reduce_ex__(self, protocol):
        return (_rebuild_tensor_v2, self.args)


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(torch_mod, obj.cls), obj.key, "cpu", obj.numel)
        return None


def torch_pickle(state, protocol):
    import io
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(state)
    return buf.getvalue()


# ---- zip (stored entries, data 64-byte aligned as torch.save does, optional zip64 end records).
def zip_archive(entries, zip64=False):
    out, central = b"", b""
    for name, data in entries:
        n = name.encode()
        pad = -(len(out) + 30 + len(n) + 4) % 64
        extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB' padding field, like torch's writer
        crc = zlib.crc32(data)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data), len(data), len(n), len(extra))
        out += n + extra + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, len(data), len(data),
                               len(n), 0, 0, 0, 0, 0, offset) + n
    cd_offset = len(out)
    out += central
    if zip64:
        rec = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), len(central),
                           cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, rec, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    return out


def torch_zip(state, storages, protocol=2, zip64=False, archive="archive"):
    pkl = torch_pickle(state, protocol)
    entries = [(archive + "/data.pkl", pkl)]
    entries += [(archive + "/data/" + key, raw) for key, raw in storages]
    entries.append((archive + "/version", b"3\n"))
    return pkl, zip_archive(entries, zip64)


s0, s1 = Storage("FloatStorage", "0", 6), Storage("BFloat16Storage", "1", 4)
state = collections.OrderedDict()
state["model.embed_tokens.weight"] = Tensor(s0, 0, [3, 2], [2, 1])
state["model.norm.weight"] = Tensor(s0, 4, [2], [1])          # a view into the same storage
state["lm_head.weight"] = Tensor(s1, 0, [2, 2], [1, 2])        # transposed strides
storages = [("0", f32(1, 2, 3, 4, 5, 6)), ("1", bytes(range(8)))]
for protocol, zip64 in ((2, False), (4, False), (2, True)):
    pkl, z = torch_zip(state, storages, protocol, zip64)
    put("pickle", "state_dict_p%d" % protocol, pkl)
    put("zip", "torch_p%d%s" % (protocol, "_zip64" if zip64 else ""), z)
half = collections.OrderedDict(w=Tensor(Storage("HalfStorage", "7", 3), 1, [2], [1]))
pkl, z = torch_zip(half, [("7", bytes(range(6)))], 2, False, "pytorch_model-00001-of-00002")
put("pickle", "half_p2", pkl)
put("zip", "half_named_archive", z)
put("pickle", "plain_values_p2", pickle.dumps(
    {"a": [1, -2, 300, 70000, 2**40, True, False, None], "b": ("x", b"y".decode(), ())}, protocol=2))

# ---- *.index.json
put("shard_index", "two_shards", json.dumps({"metadata": {"total_size": 1176064}, "weight_map": {
    "model.embed_tokens.weight": "pytorch_model-00001-of-00002.bin",
    "model.layers.0.self_attn.q_proj.weight": "pytorch_model-00001-of-00002.bin",
    "lm_head.weight": "pytorch_model-00002-of-00002.bin"}}, indent=2))
put("shard_index", "safetensors_one", json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}))

# ---- config.json
llama13b = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 5120,
            "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
            "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "rope_scaling": None, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
put("model_config", "llama13b", json.dumps(llama13b, indent=2))
gqa = dict(llama13b, hidden_size=64, intermediate_size=172, num_hidden_layers=5, num_attention_heads=8,
           num_key_value_heads=4, vocab_size=512, max_position_embeddings=512, head_dim=8, eos_token_id=[2, 3],
           torch_dtype="float32")
put("model_config", "gqa_head_dim", json.dumps(gqa))
put("model_config", "minimal", json.dumps({"model_type": "llama", "hidden_size": 8, "intermediate_size": 4,
                                            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 3}))

# ---- tokenizer_config.json / special_tokens_map.json
put("tokenizer_config", "strings", json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
added = lambda c: {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True, "rstrip": False,
                   "single_word": False}
put("tokenizer_config", "added_tokens", json.dumps({"add_bos_token": True, "bos_token": added("<s>"),
                                                    "eos_token": added("</s>"), "pad_token": None,
                                                    "model_max_length": 8192, "legacy": False}))
put("tokenizer_config", "null_eos", json.dumps({"bos_token": "<s>", "eos_token": None}))

