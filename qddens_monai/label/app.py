"""The project's MONAI Label app: the bundle's stock infer/train tasks plus suggestive annotation.

Adds to MONAI Label's stock ``monaibundle`` app:

- infer ``<model>_disagreement``: the members' per-voxel disagreement map (float), so the annotator
  sees where the ensemble hesitates;
- scoring ``qdd_ens``: per unlabeled image, uncertainty (members' disagreement averaged over the
  image) and descriptor (mean of the deepest encoder feature), stored (uncertainty in the datastore,
  descriptors beside the bundle) and recomputed when ``model.pt`` changes;
- strategies ``uncertainty`` (the most uncertain image(s)) and ``suggestive`` (the top-N uncertain,
  then greedy cosine max-cover over the unlabeled pool, DESIGN §1.5), next to ``random`` / ``first``.

Conf keys (``--conf K V``): ``models`` (bundle folder name under ``<app>/model``),
``auto_update_scoring`` (default false: MONAI Label's scoring subprocess does not race the
datastore), ``background_scoring`` (default true: the server scores the pool in a thread, see
:mod:`qddens_monai.label.strategies`), and suggestive annotation's
(:class:`~qddens_monai.label.selection.SuggestiveConfig`, listed in ``/info/`` under
``suggestive_annotation``; a request may change the first four):

- ``batch_size`` (default 1): images per ``/activelearning`` answer (``id`` = the first, ``batch`` = all);
- ``top_n`` (default 4): the short list of most uncertain images ranked by representativeness;
- ``representativeness`` (default true): max-cover among the short list; false: the most uncertain;
- ``cover_labeled`` (default false): labeled images count as covering the pool;
- ``disagreement`` (default ``variance``, or ``entropy``): the uncertainty measure;
- ``quantized_scorers`` (default true): the bundle's learners are diversely quantized (the bundle's
  ``quantization`` ``qme_net``); false: float learners (``quantization`` ``float``). The served
  bundle must match: ``qddens-monai label-server --conf quantized_scorers false`` prepares it so.

With ``--studies http(s)://.../dicom-web`` the datastore is a
:class:`~qddens_monai.label.pacs.PacsDatastore` (series fetched over DICOMweb, labels back as DICOM SEG).

Robustness (see the README's table): the datastore is a
:class:`~qddens_monai.label.datastore.CheckedDatastore` (ids confined, studies screened, labels
checked, finite numbers only); studies that cannot be served are listed under ``refused_studies`` in
``/info/``, skipped by the strategies and refused by infer (422); training is a
:class:`~qddens_monai.label.training.CheckedTrainTask`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import SqueezeDimd

from .compat import import_monailabel

import_monailabel()

import monailabel  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType  # noqa: E402
from monailabel.interfaces.tasks.scoring import ScoringMethod  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402
from monailabel.transform.post import Restored  # noqa: E402
from monailabel.utils.others.generic import get_bundle_models, strtobool  # noqa: E402

from ..config import load_bundle_configs  # noqa: E402
from ..evaluation import LearnerProbabilities  # noqa: E402
from .confine import RequestRefused  # noqa: E402
from .datastore import CheckedDatastore  # noqa: E402
from .pacs import PacsDatastore  # noqa: E402
from .scoring import DisagreementMapd  # noqa: E402
from .screening import StudyScreen  # noqa: E402
from .selection import SuggestiveConfig  # noqa: E402
from .strategies import SCORE_KEY, EnsembleScoring, SuggestiveStrategy, UncertaintyStrategy  # noqa: E402
from .studies import convert_dicom_studies  # noqa: E402
from .training import CheckedTrainTask  # noqa: E402

__all__ = [
    "QDDEnsLabelApp",
    "LabelInferTask",
    "DisagreementInferTask",
    "EnsembleScoring",
    "UncertaintyStrategy",
    "SuggestiveStrategy",
    "SCORE_KEY",
]

logger = logging.getLogger(__name__)


def _drop_2d_channel(task: BundleInferTask, post: list) -> list:
    # MONAI Label's Restored only drops the channel of 4D results; a 2D (1, H, W) map would be written
    # as a 1 x H image.
    if task.dimension == 2:
        post.append(SqueezeDimd(keys=task.key_pred, dim=0))
    return post


class LabelInferTask(BundleInferTask):
    """MONAI Label's bundle infer task, writing the label map as uint8 (the stock task writes float32,
    which PNG studies cannot hold) and without a channel in 2D."""

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return _drop_2d_channel(self, list(super().post_transforms(data)))

    def writer(self, data: dict[str, Any], extension: Optional[str] = None, dtype: Any = None) -> Any:
        return super().writer(data, extension=extension, dtype=np.uint8 if dtype is None else dtype)


class DisagreementInferTask(BundleInferTask):
    """The bundle's infer task, returning the members' per-voxel disagreement (float32) instead of labels."""

    def __init__(self, path: str, conf: dict[str, str], kind: str = "variance", **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        self.kind = kind
        self.description = f"members' per-voxel disagreement ({kind}): a float map (0 = the members agree), not labels"
        self.type = InferType.OTHERS  # not a segmentation: a viewer would look for label values in it
        self.labels = {}

    def inferer(self, data: Any = None) -> Callable:
        return LearnerProbabilities(super().inferer(data))  # (1, K*C, *S) through the bundle's sliding window

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        num_classes = int(self.bundle_config.get_parsed_content("num_classes"))
        return _drop_2d_channel(
            self,
            [
                DisagreementMapd(keys=self.key_pred, num_classes=num_classes, kind=self.kind),
                Restored(keys=self.key_pred, ref_image=self.key_image),
            ],
        )

    def writer(self, data: dict[str, Any], extension: Optional[str] = None, dtype: Any = None) -> Any:
        # A float map: NIfTI whatever the study's format (PNG holds no floats).
        return super().writer(data, extension=extension or ".nii.gz", dtype=np.float32)


def _bundle_screen(bundle: str) -> StudyScreen:
    """A :class:`StudyScreen` with the bundle's ``spatial_dims`` / ``in_channels`` / ``num_classes``."""
    parser = ConfigParser()
    parser.read_config(load_bundle_configs(os.path.join(bundle, "configs", "inference.json")))
    return StudyScreen(*(int(parser.get_parsed_content(k)) for k in ("spatial_dims", "in_channels", "num_classes")))


def _bundle_quantization(bundle: str) -> str:
    """The bundle's ``quantization`` (``"float"`` when the config has none)."""
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    return str(parser.get_parsed_content("quantization")) if "quantization" in parser else "float"


def _bundle_classes(bundle: str) -> dict[int, str]:
    """``{label value: name}`` of the bundle's foreground classes (its metadata's ``channel_def``)."""
    import json

    with open(os.path.join(bundle, "configs", "metadata.json")) as f:
        outputs = json.load(f)["network_data_format"]["outputs"]
    channels = next(iter(outputs.values())).get("channel_def", {})
    return {int(k): str(v) for k, v in channels.items() if str(v).lower() != "background"}


def _uploaded(path: str, sessions: Optional[str]) -> bool:
    """Whether ``path`` is a file MONAI Label received with the request (``tempfile``'s ``tmp*`` file
    directly in the temporary folder) or a session's image, the only server paths infer accepts."""
    real = Path(path).resolve()
    if not real.exists():
        return False
    if real.parent == Path(tempfile.gettempdir()).resolve() and real.name.startswith("tmp"):
        return True
    return bool(sessions) and Path(sessions).resolve() in real.parents


class QDDEnsLabelApp(MONAILabelApp):
    """MONAI Label app serving the bundle(s) in ``<app_dir>/model/<name>`` (conf ``models``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = {"zoo_source": "github", **conf}  # local bundles only: never reach for the model zoo
        self.models = get_bundle_models(app_dir, conf)
        missing = [n for n, p in self.models.items() if not os.path.isdir(p)]
        if missing:
            raise FileNotFoundError(f"no bundle folder for model(s) {missing} under {app_dir}/model")
        self.suggestive = SuggestiveConfig.from_conf(conf)
        self.kind = self.suggestive.disagreement
        self.top_n = self.suggestive.top_n
        bundle = next(iter(self.models.values()))
        self.screen = _bundle_screen(bundle)
        quantization = _bundle_quantization(bundle)
        if (quantization != "float") != self.suggestive.quantized_scorers:
            raise ValueError(
                f"conf quantized_scorers={self.suggestive.quantized_scorers} but the bundle {bundle} has "
                f"quantization {quantization!r}: start the server with qddens-monai label-server "
                "(it prepares the bundle to match) or set the bundle's quantization"
            )
        if not studies.startswith(("http://", "https://")) and os.path.isdir(studies):
            convert_dicom_studies(studies, check=self.screen.study_problem)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"QDD-Ens MONAI Label app (MONAI Label {monailabel.__version__})",
            description="QDD-Ens ensemble segmentation with suggestive annotation from member disagreement",
            version=monailabel.__version__,
        )
        self._auto_update_scoring = strtobool(conf.get("auto_update_scoring", "false"))

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
                return super().init_datastore()
            return self._pacs_datastore()
        return CheckedDatastore(
            self.studies,
            self.screen,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _pacs_datastore(self) -> PacsDatastore:
        """A :class:`PacsDatastore` on ``--studies`` (a DICOMweb root), with MONAI Label's DICOMweb settings
        (user / password, QIDO / WADO / STOW prefixes, search filter, cache path)."""
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.datastore.dicom import DICOMwebClientX
        from monailabel.utils.others.generic import md5_digest

        session = None
        if "googleapis.com" in self.studies:  # Google Cloud Healthcare, as MONAI Label does (not tested here)
            from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials

            session = create_session_from_gcp_credentials()
        elif settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or os.path.join(
            Path.home(), ".cache", "qddens-monai", "dicomweb"
        )
        bundle = next(iter(self.models.values()))
        return PacsDatastore(
            client,
            self.screen,
            os.path.join(cache, md5_digest(self.studies)),
            _bundle_classes(bundle),
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        )

    def on_init_complete(self) -> None:
        """Screen every study once when the server starts (the verdicts are cached per file version)."""
        datastore = self.datastore()
        if isinstance(datastore, CheckedDatastore) and not isinstance(datastore, PacsDatastore):
            # (a PACS's series are fetched and screened when first needed, e.g. by the background scoring)
            start = time.monotonic()
            images = datastore.list_images()
            bad = len(images) - len(datastore.servable(images))
            logger.info(
                f"screened {len(images)} studies in {time.monotonic() - start:.1f} s: {bad} cannot be served"
                + "".join(f"\n  {p}" for p in self.screen.refused().values())
            )
        if self.models and strtobool(self.conf.get("background_scoring", "true")):
            scoring = self._scoring()
            scoring.background = True
            scoring.start(datastore)
        super().on_init_complete()

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["refused_studies"] = {Path(path).name: problem for path, problem in self.screen.refused().items()}
        if self.models:
            info["scoring_progress"] = dict(self._scoring().progress)
            info["suggestive_annotation"] = self.suggestive.as_dict()
        return info

    def infer(self, request: dict[str, Any], datastore: Optional[Datastore] = None) -> dict[str, Any]:
        """MONAI Label's infer on a datastore image id (never a server path) that passes the screen, or on
        an uploaded file; 404 for an unknown id, 422 for a study that cannot be served."""
        datastore = datastore or self.datastore()
        image = request.get("image")
        if isinstance(image, str) and isinstance(datastore, CheckedDatastore):
            sessions = self._sessions.store_path if self._sessions else None
            if os.path.isabs(image) and _uploaded(image, sessions):
                problem = self.screen.study_problem(image)
            else:
                problem = datastore.study_problem(image)  # 400 for a path, 404 for an unknown id
                request = {**request, "image": datastore.get_image_uri(image), "save_label": False}
            if problem:
                raise RequestRefused(422, f"study {Path(image).name!r} cannot be served: {problem}")
        return super().infer(request, datastore)

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            infers[name] = LabelInferTask(path, self.conf)
            infers[f"{name}_disagreement"] = DisagreementInferTask(path, self.conf, kind=self.kind)
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, path in self.models.items():
            task = CheckedTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def _scoring(self) -> EnsembleScoring:
        """The one scoring of the pool, shared by the scoring method and the strategies."""
        if getattr(self, "_pool_scoring", None) is None:
            self._pool_scoring = EnsembleScoring(self.models[next(iter(self.models))], self.kind)
        return self._pool_scoring

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {SCORE_KEY: self._scoring()} if self.models else {}

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        if self.models:
            scoring = self._scoring()
            strategies["uncertainty"] = UncertaintyStrategy(scoring, self.suggestive)
            strategies["suggestive"] = SuggestiveStrategy(scoring, self.suggestive)
        return strategies
