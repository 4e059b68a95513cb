"""A DICOMweb server (QIDO-RS search, WADO-RS retrieve, STOW-RS store) behind one small class, with every
failure turned into a PacsError whose message a clinician can act on (server down, credentials refused, an
empty study). dicomweb-client does the protocol; this module chooses what to ask for and what to read back:
never the patient's name or other free text, only UIDs, the accession number, dates, modalities and counts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from pydicom.dataset import Dataset

TIMEOUT_S = 30
MAX_SERIES_INSTANCES = 2000          # a series larger than this is not retrieved

# QIDO-RS attributes read back (keywords as DICOM JSON tags); nothing else of a match is looked at.
STUDY_FIELDS = {"StudyInstanceUID": "0020000D", "AccessionNumber": "00080050", "StudyDate": "00080020",
                "ModalitiesInStudy": "00080061", "NumberOfStudyRelatedSeries": "00201206",
                "NumberOfStudyRelatedInstances": "00201208"}
SERIES_FIELDS = {"SeriesInstanceUID": "0020000E", "SeriesNumber": "00200011", "Modality": "00080060",
                 "NumberOfSeriesRelatedInstances": "00201209"}


class PacsError(Exception):
    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class PacsSettings:
    url: str                 # the DICOMweb root, e.g. https://pacs.example/dicom-web
    user: str = ""
    password: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    accession: str
    date: str                # YYYY-MM-DD or ""
    modalities: tuple[str, ...]
    series: int | None
    instances: int | None


@dataclass(frozen=True)
class SeriesMatch:
    series_uid: str
    number: int | None
    modality: str
    instances: int | None


def _value(item: dict[str, Any], tag: str) -> list[Any]:
    return (item.get(tag) or {}).get("Value") or []


def _first(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    values = _value(item, tag)
    return values[0] if values else default


def _date(raw: str) -> str:
    return f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 and raw.isdigit() else ""


def date_range(start: str | None, end: str | None) -> str | None:
    """A QIDO StudyDate range from ISO dates (either may be empty)."""
    if not start and not end:
        return None
    return f"{(start or '').replace('-', '')}-{(end or '').replace('-', '')}"


class Pacs:
    def __init__(self, settings: PacsSettings):
        if not settings.configured:
            raise PacsError("No PACS is configured: an administrator sets JOINTSCAN_DICOMWEB_URL (and its "
                            "credentials).", 503)
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings
        session = requests.Session()
        if settings.user:
            session.auth = (settings.user, settings.password)
        self._client = DICOMwebClient(url=settings.url.rstrip("/"), session=session, timeout=TIMEOUT_S)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError("The PACS refused JointScan's credentials: an administrator checks "
                                "JOINTSCAN_DICOMWEB_USER and JOINTSCAN_DICOMWEB_PASSWORD.", 502) from exc
            if status == 404:
                raise PacsError(f"The PACS does not hold this {what}.", 404) from exc
            raise PacsError(f"The PACS answered HTTP {status} to the {what} request.", 502) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PacsError("The PACS does not answer: it may be down, or JOINTSCAN_DICOMWEB_URL is wrong. "
                            "Nothing was stored.", 503) from exc
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"The {what} request to the PACS failed ({type(exc).__name__}).", 502) from exc

    # -- QIDO-RS -------------------------------------------------------------------------------
    def studies(self, patient_id: str = "", accession: str = "", date_from: str = "", date_to: str = "",
                modality: str = "", limit: int = 50) -> list[StudyMatch]:
        filters: dict[str, str] = {}
        if patient_id:
            filters["PatientID"] = patient_id
        if accession:
            filters["AccessionNumber"] = accession
        if modality:
            filters["ModalitiesInStudy"] = modality
        dates = date_range(date_from, date_to)
        if dates:
            filters["StudyDate"] = dates
        found = self._call("study search", self._client.search_for_studies, search_filters=filters, limit=limit,
                           fields=list(STUDY_FIELDS))
        return [StudyMatch(study_uid=str(_first(m, STUDY_FIELDS["StudyInstanceUID"])),
                           accession=str(_first(m, STUDY_FIELDS["AccessionNumber"])),
                           date=_date(str(_first(m, STUDY_FIELDS["StudyDate"]))),
                           modalities=tuple(str(v) for v in _value(m, STUDY_FIELDS["ModalitiesInStudy"])),
                           series=_int(_first(m, STUDY_FIELDS["NumberOfStudyRelatedSeries"], None)),
                           instances=_int(_first(m, STUDY_FIELDS["NumberOfStudyRelatedInstances"], None)))
                for m in found if _first(m, STUDY_FIELDS["StudyInstanceUID"])]

    def series(self, study_uid: str) -> list[SeriesMatch]:
        found = self._call("series search", self._client.search_for_series, study_instance_uid=study_uid,
                           fields=list(SERIES_FIELDS))
        series = [SeriesMatch(series_uid=str(_first(m, SERIES_FIELDS["SeriesInstanceUID"])),
                              number=_int(_first(m, SERIES_FIELDS["SeriesNumber"], None)),
                              modality=str(_first(m, SERIES_FIELDS["Modality"])),
                              instances=_int(_first(m, SERIES_FIELDS["NumberOfSeriesRelatedInstances"], None)))
                  for m in found if _first(m, SERIES_FIELDS["SeriesInstanceUID"])]
        if not series:
            raise PacsError("This study holds no series: there is nothing to analyse.", 404)
        return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.series_uid))

    # -- WADO-RS -------------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        known = {s.series_uid: s for s in self.series(study_uid)}
        if series_uid not in known:
            raise PacsError("The PACS does not hold this series in this study.", 404)
        if (known[series_uid].instances or 0) > MAX_SERIES_INSTANCES:
            raise PacsError(f"The series holds {known[series_uid].instances} images; at most "
                            f"{MAX_SERIES_INSTANCES} are retrieved.", 413)
        datasets = self._call("series retrieve", self._client.retrieve_series, study_uid, series_uid)
        if not datasets:
            raise PacsError("This series holds no images: there is nothing to analyse.", 404)
        return list(datasets)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        return self._call("image retrieve", self._client.retrieve_instance, study_uid, series_uid, sop_uid)

    # -- STOW-RS -------------------------------------------------------------------------------
    def store(self, datasets: list[Dataset], study_uid: str) -> None:
        self._call("store", self._client.store_instances, datasets, study_instance_uid=study_uid)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def pick_image(datasets: list[Dataset]) -> Dataset:
    """The image to analyse from a series: the middle one by position along the slice normal (by instance
    number where positions are missing), so that a series of slices gives a slice through the joints. A task
    that reads studies gets the whole series (web/pacs.py); this image then stands for it when results go back."""
    def order(ds: Dataset) -> tuple:
        pos, ori = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if pos is not None and ori is not None and len(ori) == 6:
            import numpy as np

            normal = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
            return (0, float(np.dot(normal, np.asarray(pos, float))))
        return (1, int(ds.get("InstanceNumber") or 0))
    images = sorted((d for d in datasets if "PixelData" in d), key=order)
    if not images:
        raise PacsError("This series holds no images (only reports or other objects).", 404)
    return images[len(images) // 2]
