"""The teacher registry: one declarative record per foundation model.

A record says how to build the architecture with timm (name + kwargs), where its weights
come from, how patches are prepared (input size, resize, mean/std), what the canonical
embedding is, which blocks give the low/mid levels, and the dims of every level. Adding a
teacher is adding a record; :func:`shazam.teachers.build.build_model` builds any of them.

Facts are from the models' public cards (DESIGN §4). Block indices are 0-based positions in
``model.blocks``: "after block ⌊L/3⌋" (1-based) is index ⌊L/3⌋ − 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

LEVELS = ("low", "mid", "high")
# What a teacher is shown of each patch (see shazam.teachers.build.input_view). Real teachers
# see the full patch; the demo's toy teachers are complementary by construction: one sees only
# the patch's mean colour, the other only its grayscale local-contrast texture.
VIEWS = ("full", "colour", "texture")
# How the published checkpoint names its tensors. timm: as the timm architecture (loaded as is);
# hf_dinov2: a Hugging Face transformers Dinov2Model, converted to the timm layout when loaded
# (shazam.teachers.convert).
WEIGHT_LAYOUTS = ("timm", "hf_dinov2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


class UnknownTeacherError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return self.args[0]


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    arch: str  # timm model name
    kwargs: dict = field(default_factory=dict)  # timm kwargs; layer classes by name
    hf_repo: str | None = None  # weights on the Hugging Face hub (None: built-in toy weights)
    gated: bool = True
    input_size: int = 224
    resize_to: int | None = None  # resize to this, then centre-crop input_size (None: = input)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    embedding: str = "pooled"  # pooled: timm's pooled pre-logits | cls_mean: class ⊕ mean(patch)
    family: str = "vit"  # vit: levels are class tokens | cnn: levels are pooled stage maps
    stages: tuple[str, ...] = ()  # module names of the blocks/stages (default: model.blocks)
    low_block: int | None = None
    mid_block: int | None = None
    dims: dict = field(default_factory=dict)  # level -> dim, verified by `teachers check`
    precision: str = "bf16"  # preferred autocast dtype on CUDA
    seed: int | None = None  # toy teachers: fixed-seed random init, no download
    view: str = "full"  # input transform before normalisation: full | colour | texture (VIEWS)
    weights_layout: str = "timm"  # tensor names of the published checkpoint (WEIGHT_LAYOUTS)
    description: str = ""

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"teacher {self.name}: view must be one of {VIEWS}: {self.view}")
        if self.weights_layout not in WEIGHT_LAYOUTS:
            raise ValueError(
                f"teacher {self.name}: weights_layout must be one of {WEIGHT_LAYOUTS}: "
                f"{self.weights_layout}"
            )

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(lv for lv in LEVELS if lv in self.dims)

    @property
    def weight_source(self) -> str:
        return f"hf:{self.hf_repo}" if self.hf_repo else f"built-in (seed {self.seed})"


def _vit_levels(depth: int) -> dict:
    return {"low_block": depth // 3 - 1, "mid_block": 2 * depth // 3 - 1}


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
# Paige's ViT-H/14 trunk (Virchow; Virchow2 adds 4 register tokens)
_VIRCHOW = dict(
    img_size=224,
    init_values=1e-5,
    num_classes=0,
    mlp_ratio=5.3375,
    global_pool="",
    dynamic_img_size=True,
    **_SWIGLU,
)

_RECORDS = [
    TeacherSpec(
        name="virchow2",
        arch="vit_huge_patch14_224",
        kwargs={**_VIRCHOW, "reg_tokens": 4},
        hf_repo="paige-ai/Virchow2",
        embedding="cls_mean",  # authors: concat(class token, mean of patch tokens) = 2560
        **_vit_levels(32),
        dims={"low": 1280, "mid": 1280, "high": 2560},
        precision="fp16",
        description="Paige Virchow2, ViT-H/14 (632M), 4 register tokens",
    ),
    TeacherSpec(
        name="virchow",
        arch="vit_huge_patch14_224",
        # Virchow2's architecture without reg_tokens: the class token is the only prefix token
        kwargs=_VIRCHOW,
        hf_repo="paige-ai/Virchow",
        embedding="cls_mean",  # authors: concat(class token, mean of the 256 patch tokens) = 2560
        **_vit_levels(32),
        dims={"low": 1280, "mid": 1280, "high": 2560},
        precision="fp16",
        description="Paige Virchow (v1), ViT-H/14 (632M), no register tokens",
    ),
    TeacherSpec(
        name="uni2_h",
        arch="vit_giant_patch14_224",
        kwargs=dict(
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            num_classes=0,
            no_embed_class=True,
            reg_tokens=8,
            dynamic_img_size=True,
            **_SWIGLU,
        ),  # fmt: skip
        hf_repo="MahmoodLab/UNI2-h",
        **_vit_levels(24),
        dims={"low": 1536, "mid": 1536, "high": 1536},
        description="MahmoodLab UNI2-h, ViT-g/14 layout with 24 blocks (681M), 8 register tokens",
    ),
    TeacherSpec(
        name="uni",
        arch="vit_large_patch16_224",
        kwargs=dict(
            img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True
        ),
        hf_repo="MahmoodLab/UNI",
        **_vit_levels(24),
        dims={"low": 1024, "mid": 1024, "high": 1024},
        description="MahmoodLab UNI, ViT-L/16 (303M)",
    ),
    TeacherSpec(
        name="phikon_v2",
        arch="vit_large_patch16_224",
        # a DINOv2 ViT-L/16: LayerScale (any init value: the checkpoint's lambdas replace it),
        # no register tokens; pooled = class token after the final norm (last_hidden_state[:, 0])
        kwargs=dict(
            img_size=224,
            patch_size=16,
            init_values=1.0,
            num_classes=0,
            global_pool="token",
            dynamic_img_size=True,
        ),  # fmt: skip
        hf_repo="owkin/phikon-v2",
        gated=False,
        weights_layout="hf_dinov2",  # published as a transformers Dinov2Model
        **_vit_levels(24),
        dims={"low": 1024, "mid": 1024, "high": 1024},
        description="Owkin Phikon-v2, ViT-L/16 (303M) trained with DINOv2",
    ),
    TeacherSpec(
        name="gigapath",
        arch="vit_giant_patch14_dinov2",
        kwargs=dict(
            img_size=224,
            in_chans=3,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            init_values=1e-5,
            mlp_ratio=5.33334,
            num_classes=0,
            global_pool="token",
        ),  # fmt: skip
        hf_repo="prov-gigapath/prov-gigapath",
        resize_to=256,  # authors: resize 256, centre-crop 224
        **_vit_levels(40),
        dims={"low": 1536, "mid": 1536, "high": 1536},
        description="Prov-GigaPath tile encoder, ViT-g/16 (1.1B)",
    ),
    TeacherSpec(
        name="h_optimus_0",
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs=dict(
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            global_pool="token",
            dynamic_img_size=False,
        ),  # fmt: skip
        hf_repo="bioptimus/H-optimus-0",
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        **_vit_levels(40),
        dims={"low": 1536, "mid": 1536, "high": 1536},
        precision="fp16",
        description="Bioptimus H-optimus-0, ViT-g/14 (1.1B), 4 register tokens",
    ),
    # Toy teachers: tiny timm architectures of the two families, fixed-seed weights, no
    # download. They go through the same builder, hooks, loader and writer as the real ones.
    # Their views make them complementary: the demo's XOR task needs both (shazam.demo).
    TeacherSpec(
        name="toy_vit",
        arch="vit_tiny_patch16_224",
        kwargs=dict(
            img_size=224,
            embed_dim=96,
            depth=6,
            num_heads=3,
            reg_tokens=2,
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,
        ),  # fmt: skip
        gated=False,
        embedding="cls_mean",  # same path as virchow2, register tokens included
        **_vit_levels(6),
        dims={"low": 96, "mid": 96, "high": 192},
        precision="fp32",
        seed=1,
        view="colour",
        description="toy ViT (96 wide, 6 blocks, 2 register tokens); sees colour only",
    ),
    TeacherSpec(
        name="toy_cnn",
        arch="resnet10t",
        # timm zero-initialises each block's last BN; with random weights that leaves almost
        # no input dependence in the output, so the toy keeps a normal init there
        kwargs=dict(num_classes=0, zero_init_last=False),
        gated=False,
        family="cnn",
        stages=("layer1", "layer2", "layer3", "layer4"),
        low_block=1,
        mid_block=2,
        dims={"low": 128, "mid": 256, "high": 512},
        precision="fp32",
        seed=2,
        view="texture",
        description="toy ConvNet (ResNet-10-T); sees grayscale texture only",
    ),
]

# H-optimus-1 shares H-optimus-0's architecture and preprocessing; only the weights differ
_i = next(i for i, r in enumerate(_RECORDS) if r.name == "h_optimus_0")
_RECORDS.insert(
    _i + 1,
    replace(
        _RECORDS[_i],
        name="h_optimus_1",
        hf_repo="bioptimus/H-optimus-1",
        description="Bioptimus H-optimus-1, ViT-g/14 (1.1B), 4 register tokens",
    ),
)

REGISTRY: dict[str, TeacherSpec] = {r.name: r for r in _RECORDS}


def get_spec(name: str) -> TeacherSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownTeacherError(
            f"unknown teacher '{name}'; registered: {', '.join(REGISTRY)}"
        ) from None
