"""Demo data for a Chinese tertiary hospital: reference data, weekly slot templates, synthetic patients,
pending exam orders and one staff account per role.

Pure data: nothing here touches a database. Patients and orders are generated from a seeded
random.Random(2026), so every import yields identical rows. All people are fictitious.
"""

from __future__ import annotations

import random
from datetime import date, time, timedelta

import msgspec

from app.security.idcard import checksum_char

HOSPITAL_ID = "h1"
DEMO_PASSWORD = "Huiyue@2026"  # noqa: S105 - the published demo password, printed at start-up  # nosec B105
_SEED = 2026


class Hospital(msgspec.Struct, frozen=True):
    id: str
    name: str
    short_name: str
    timezone: str = "Asia/Shanghai"


class Campus(msgspec.Struct, frozen=True):
    id: str
    name: str
    address: str


class Department(msgspec.Struct, frozen=True):
    id: str
    campus_id: str
    name: str
    category: str  # radiology / ultrasound / endoscopy / ecg / clinical / ward
    location: str
    sensitive: bool = False


class Resource(msgspec.Struct, frozen=True):
    id: str
    department_id: str
    campus_id: str
    kind: str  # device / room / physician
    modality: str  # CT / MR / DX / US / ES / ECG
    name: str
    location: str


class ExamType(msgspec.Struct, frozen=True):
    code: str
    name: str
    modality: str
    department_id: str
    body_part: str
    duration_min: int
    prep_text: str
    fasting: bool = False
    full_bladder: bool = False
    contrast: str | None = None  # iodine / gadolinium / barium / ultrasound
    anaesthesia: bool = False
    # Not checked in by slot end + this: a no-show (DOMAIN.md: 30 min, MRI 15 min).
    noshow_grace_min: int = 30


class SlotTemplate(msgspec.Struct, frozen=True):
    resource_id: str
    weekday: int  # ISO: 1 = Monday
    start_time: time
    end_time: time
    window_min: int
    capacity: int
    quotas: dict[str, int]


class Patient(msgspec.Struct, frozen=True):
    mrn: str
    name: str
    gender: str  # M / F
    birth_date: date
    id_number: str
    phone: str
    insurance_no: str | None


class ExamOrder(msgspec.Struct, frozen=True):
    order_no: str
    patient_mrn: str
    exam_code: str
    ordering_department_id: str
    ordering_doctor: str
    patient_class: str  # outpatient / inpatient / emergency / checkup
    priority: str  # routine / urgent / emergency
    ward_id: str | None
    bed_no: str | None
    clinical_note: str


class StaffAccount(msgspec.Struct, frozen=True):
    username: str
    role: str
    display_name: str
    department_id: str | None = None
    patient_mrn: str | None = None  # set for the patient's own account


QUOTA_CHANNELS = frozenset({"clinic", "desk", "self", "ward", "emergency", "checkup"})

# --------------------------------------------------------------------------------------------------
# Hospital, campuses, departments
# --------------------------------------------------------------------------------------------------

HOSPITAL = Hospital(id=HOSPITAL_ID, name="汇约市第一人民医院", short_name="市一院")

CAMPUSES: tuple[Campus, ...] = (
    Campus("main", "本部", "汇约市中山路88号"),
    Campus("east", "东院", "汇约市东湖区滨江大道1200号"),
)

DEPARTMENTS: tuple[Department, ...] = (
    # Exam (medical technology) departments
    Department("RAD", "main", "放射科", "radiology", "医技楼1层"),
    Department("RAD-E", "east", "放射科东院", "radiology", "东院门诊楼负1层"),
    Department("US", "main", "超声科", "ultrasound", "门诊楼3层"),
    Department("US-E", "east", "超声科东院", "ultrasound", "东院门诊楼2层"),
    Department("ENDO", "main", "内镜中心", "endoscopy", "医技楼3层"),
    Department("ECG", "main", "心电室", "ecg", "门诊楼2层"),
    Department("ECG-E", "east", "心电室东院", "ecg", "东院门诊楼2层"),
    # Clinical (ordering) departments
    Department("GI", "main", "消化内科", "clinical", "门诊楼4层A区"),
    Department("CARD", "main", "心内科", "clinical", "门诊楼4层B区"),
    Department("SURG", "main", "普外科", "clinical", "门诊楼5层A区"),
    Department("RESP", "main", "呼吸内科", "clinical", "门诊楼4层C区"),
    Department("OBGYN", "main", "妇产科", "clinical", "门诊楼6层", sensitive=True),
    Department("URO", "main", "泌尿外科", "clinical", "门诊楼5层B区"),
    Department("ENDOCR", "main", "内分泌科", "clinical", "门诊楼4层D区"),
    Department("NEURO", "main", "神经内科", "clinical", "门诊楼5层C区"),
    Department("ER", "main", "急诊科", "clinical", "急诊楼1层"),
    Department("CHECKUP", "east", "体检中心", "clinical", "东院健康管理中心1层"),
    # Wards
    Department("W-GI", "main", "消化内科病区", "ward", "住院部8层"),
    Department("W-CARD", "main", "心内科病区", "ward", "住院部10层"),
    Department("W-SURG", "main", "普外科病区", "ward", "住院部12层"),
    Department("W-RESP", "main", "呼吸内科病区", "ward", "住院部9层"),
)

# --------------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------------

RESOURCES: tuple[Resource, ...] = (
    # CT
    Resource("CT1", "RAD", "main", "device", "CT", "CT1 (西门子 SOMATOM Force 双源CT)", "医技楼1层 CT1室"),
    Resource("CT2", "RAD", "main", "device", "CT", "CT2 (联影 uCT 760)", "医技楼1层 CT2室"),
    Resource("CT3", "RAD-E", "east", "device", "CT", "CT3 (GE Revolution EVO)", "东院门诊楼负1层 CT室"),
    # MRI
    Resource("MR1", "RAD", "main", "device", "MR", "MR1 (西门子 MAGNETOM Prisma 3.0T)", "医技楼1层 MR1室"),
    Resource("MR2", "RAD-E", "east", "device", "MR", "MR2 (联影 uMR 570 1.5T)", "东院门诊楼负1层 MR室"),
    # DR (digital radiography); DR1 is a multi-purpose unit with dynamic flat panel for barium studies
    Resource("DR1", "RAD", "main", "device", "DX", "DR1 (岛津 SONIALVISION G4 多功能数字胃肠/DR)", "医技楼1层 DR1室"),
    Resource("DR2", "RAD-E", "east", "device", "DX", "DR2 (飞利浦 DigitalDiagnost C90)", "东院门诊楼负1层 DR室"),
    # Ultrasound rooms
    Resource("US01", "US", "main", "room", "US", "超声1室", "门诊楼3层 超声1室"),
    Resource("US02", "US", "main", "room", "US", "超声2室 (超声造影)", "门诊楼3层 超声2室"),
    Resource("US03", "US", "main", "room", "US", "超声3室 (产科)", "门诊楼3层 超声3室"),
    Resource("US04", "US", "main", "room", "US", "超声4室 (产科)", "门诊楼3层 超声4室"),
    Resource("US05", "US", "main", "room", "US", "超声5室 (心脏)", "门诊楼3层 超声5室"),
    Resource("US06", "US", "main", "room", "US", "超声6室 (心脏/血管)", "门诊楼3层 超声6室"),
    Resource("US07", "US-E", "east", "room", "US", "东院超声7室", "东院门诊楼2层 超声7室"),
    Resource("US08", "US-E", "east", "room", "US", "东院超声8室", "东院门诊楼2层 超声8室"),
    # Endoscopy rooms
    Resource("GS1", "ENDO", "main", "room", "ES", "胃镜1室", "医技楼3层 胃镜1室"),
    Resource("GS2", "ENDO", "main", "room", "ES", "胃镜2室 (无痛)", "医技楼3层 胃镜2室"),
    Resource("GS3", "ENDO", "main", "room", "ES", "胃镜3室 (无痛)", "医技楼3层 胃镜3室"),
    Resource("CS1", "ENDO", "main", "room", "ES", "肠镜1室 (无痛)", "医技楼3层 肠镜1室"),
    Resource("CS2", "ENDO", "main", "room", "ES", "肠镜2室", "医技楼3层 肠镜2室"),
    # ECG rooms
    Resource("ECG1", "ECG", "main", "room", "ECG", "心电1室 (含运动平板)", "门诊楼2层 心电1室"),
    Resource("ECG2", "ECG", "main", "room", "ECG", "心电2室", "门诊楼2层 心电2室"),
    Resource("ECG3", "ECG-E", "east", "room", "ECG", "东院心电室", "东院门诊楼2层 心电室"),
)

# --------------------------------------------------------------------------------------------------
# Exam types
# --------------------------------------------------------------------------------------------------

_PREP_CT_PLAIN = "检查前请去除检查部位的金属物品（项链、发夹、带金属扣的衣物等）。孕妇或可能怀孕者请提前告知医生。"
_PREP_CT_ABD = (
    "检查前禁食4小时。检查前30分钟按医嘱饮水500-800毫升以充盈胃肠道。一周内做过钡餐检查者请告知医生，"
    "钡剂未排空前不宜检查。请去除检查部位的金属物品。"
)
_PREP_CT_CONTRAST = (
    "检查前禁食4小时，可少量饮水。请携带近期肾功能（血肌酐）检查结果。服用二甲双胍者检查前后各停药48小时"
    "（遵医嘱）。对碘造影剂过敏、甲亢未控制、重症肌无力者请提前告知医生。检查当日需签署碘造影剂使用知情同意书，"
    "建议家属陪同。检查后留观30分钟，无不适方可离开，并多饮水（约2000毫升）以促进造影剂排出。"
)
_PREP_CTA_CORO = (
    _PREP_CT_CONTRAST
    + "心率控制在70次/分以下效果最佳，心率过快者请按医嘱提前服用控制心率药物。检查前12小时避免饮用咖啡、浓茶，"
    "检查时需配合屏气约10秒，请提前练习。"
)
_PREP_MR = (
    "检查前请去除身上所有金属及磁性物品（手机、钥匙、银行卡、手表、假牙、发夹、含金属的内衣等）。"
    "体内有心脏起搏器、动脉瘤夹、金属心脏瓣膜、人工耳蜗、神经刺激器或其他金属植入物者请务必提前告知医生。"
    "妊娠3个月内、幽闭恐惧症者请提前告知。检查时间较长，检查过程中请保持不动。"
)
_PREP_MR_CONTRAST = (
    _PREP_MR + "增强检查需注射钆对比剂，请携带近期肾功能检查结果，对比剂过敏史者请提前告知。检查后请多饮水。"
)
_PREP_MR_ABD = _PREP_MR_CONTRAST + "检查前禁食禁水4-6小时，检查时需按指令反复屏气，请提前练习。"
_PREP_MRCP = _PREP_MR + "检查前禁食禁水6小时，以减少胃肠道液体干扰。检查时需配合屏气。"
_PREP_MR_PELVIS = _PREP_MR + "检查前1小时适量饮水，保持膀胱适度充盈，不要过度憋尿。女性患者请避开月经期。"
_PREP_DX = "检查前请去除检查部位的金属物品及带有图案、亮片的衣物。孕妇或可能怀孕者请提前告知医生。"
_PREP_BARIUM = (
    "检查前禁食禁水8小时（检查前一日晚餐后不再进食）。检查前3天停服含铋、钙、铁等不透X线的药物。"
    "检查后多饮水，钡剂随大便排出，大便呈白色属正常现象。近期需做腹部CT者请告知医生，钡餐后7天内不宜行腹部CT。"
)
_PREP_US_FASTING = (
    "检查前禁食8小时（前一日晚餐清淡，晚10点后不再进食），检查当日晨起禁食禁水。检查前一日避免食用豆制品、"
    "牛奶等易产气食物。如同日预约胃镜或钡餐，请先做超声检查。"
)
_PREP_US_BLADDER = (
    "检查前1-2小时饮水500-1000毫升，憋尿至膀胱充盈（有明显尿意）后再检查，检查前请勿排尿。"
    "如膀胱充盈不足，需继续饮水等待。"
)
_PREP_US_NONE = "无需特殊准备。请穿着宽松、便于暴露检查部位的衣物。"
_PREP_US_ECHO = "无需空腹。请穿着宽松、便于暴露胸部的衣物，检查前休息片刻，保持平静呼吸。"
_PREP_US_OB = "中晚孕期检查无需憋尿。请携带孕期保健手册及既往超声报告，穿着宽松衣物。"
_PREP_US_OB_EARLY = "早孕检查需充盈膀胱：检查前1-2小时饮水500-1000毫升，有明显尿意后再检查。请携带既往检查结果。"
_PREP_CEUS = (
    "检查前禁食8小时。需静脉注射超声造影剂，请提前告知药物过敏史、严重心肺疾病史。检查需签署知情同意书，"
    "检查后留观30分钟。"
)
_PREP_GASTRO = (
    "检查前禁食8小时、禁水2小时。检查前一日晚餐进食清淡易消化食物。高血压患者检查日晨可少量清水送服降压药。"
    "服用阿司匹林、氯吡格雷、华法林等抗凝/抗血小板药物者，请提前咨询医生是否需停药。请携带既往胃镜报告。"
    "如同日预约上腹部超声，请先做超声。"
)
_PREP_GASTRO_PAINLESS = (
    _PREP_GASTRO + "无痛胃镜需静脉麻醉：须提前完成麻醉评估（心电图等），必须有成年家属陪同，检查后24小时内不得驾车、"
    "高空作业或操作机械，当日不宜做需要精细判断的工作。"
)
_PREP_COLON = (
    "检查前3天进食少渣饮食（避免蔬菜、水果、带籽食物），检查前1天进流质饮食。检查前4-6小时按医嘱口服"
    "聚乙二醇电解质散进行肠道准备，直至排出清水样便。服用抗凝/抗血小板药物者请提前咨询医生。"
    "如同日预约腹部超声，请先做超声。"
)
_PREP_COLON_PAINLESS = (
    _PREP_COLON + "无痛肠镜需静脉麻醉：检查前禁食，检查前2小时禁水，须提前完成麻醉评估，必须有成年家属陪同，"
    "检查后24小时内不得驾车或高空作业。"
)
_PREP_ECG = "检查前请休息5分钟，避免剧烈运动、吸烟及饮用咖啡、浓茶。请穿着便于暴露胸部和手腕、脚踝的衣物。"
_PREP_HOLTER = (
    "佩戴前请洗澡并清洁胸部皮肤，佩戴期间不可洗澡、避免接触水，远离强磁场（如MRI、微波炉）。"
    "请如实记录日常活动及不适症状发生时间。24小时后到心电室归还记录盒。"
)
_PREP_ABPM = "佩戴前请穿着袖口宽松的上衣。佩戴期间测量时手臂保持静止、放松，夜间正常睡眠，24小时后归还设备。"
_PREP_EXERCISE = (
    "检查前2小时内避免进食过饱，停止吸烟及饮用咖啡。请穿着运动鞋和宽松衣物。遵医嘱提前停用β受体阻滞剂等药物。"
    "需有家属陪同，检查前需完成常规心电图检查。"
)


def _ct(
    code: str, name: str, body: str, minutes: int, prep: str, *, fasting: bool = False, contrast: str | None = None
) -> ExamType:
    return ExamType(code, name, "CT", "RAD", body, minutes, prep, fasting=fasting, contrast=contrast)


def _mr(
    code: str, name: str, body: str, minutes: int, prep: str, *, fasting: bool = False, contrast: str | None = None
) -> ExamType:
    return ExamType(
        code, name, "MR", "RAD", body, minutes, prep, fasting=fasting, contrast=contrast, noshow_grace_min=15
    )


def _us(
    code: str,
    name: str,
    body: str,
    minutes: int,
    prep: str,
    *,
    fasting: bool = False,
    full_bladder: bool = False,
    contrast: str | None = None,
) -> ExamType:
    return ExamType(
        code, name, "US", "US", body, minutes, prep, fasting=fasting, full_bladder=full_bladder, contrast=contrast
    )


EXAM_TYPES: tuple[ExamType, ...] = (
    # CT
    _ct("CT-HEAD", "头颅CT平扫", "头部", 5, _PREP_CT_PLAIN),
    _ct("CT-CHEST", "胸部CT平扫", "胸部", 5, _PREP_CT_PLAIN),
    _ct("CT-CHEST-LD", "低剂量胸部CT (肺癌筛查)", "胸部", 5, _PREP_CT_PLAIN),
    _ct("CT-CHEST-C", "胸部增强CT", "胸部", 10, _PREP_CT_CONTRAST, fasting=True, contrast="iodine"),
    _ct("CT-NECK-C", "颈部增强CT", "颈部", 10, _PREP_CT_CONTRAST, fasting=True, contrast="iodine"),
    _ct("CT-ABD", "上腹部CT平扫", "上腹部", 10, _PREP_CT_ABD, fasting=True),
    _ct("CT-ABD-C", "上腹部增强CT", "上腹部", 15, _PREP_CT_ABD + _PREP_CT_CONTRAST, fasting=True, contrast="iodine"),
    _ct("CT-KUB", "泌尿系CT平扫", "泌尿系", 10, _PREP_CT_PLAIN + "检查前30分钟饮水500毫升，适度充盈膀胱。"),
    _ct("CT-LSPINE", "腰椎CT平扫", "腰椎", 5, _PREP_CT_PLAIN),
    _ct("CTA-HEAD", "头颈部CTA", "头颈部血管", 15, _PREP_CT_CONTRAST, fasting=True, contrast="iodine"),
    _ct("CTA-CORO", "冠状动脉CTA", "心脏冠状动脉", 15, _PREP_CTA_CORO, fasting=True, contrast="iodine"),
    # MRI
    _mr("MR-HEAD", "头颅MRI平扫", "头部", 20, _PREP_MR),
    _mr("MR-HEAD-C", "头颅MRI平扫+增强", "头部", 30, _PREP_MR_CONTRAST, contrast="gadolinium"),
    _mr("MR-CSPINE", "颈椎MRI平扫", "颈椎", 20, _PREP_MR),
    _mr("MR-LSPINE", "腰椎MRI平扫", "腰椎", 20, _PREP_MR),
    _mr("MR-KNEE", "膝关节MRI平扫", "膝关节", 20, _PREP_MR),
    _mr("MR-ABD-C", "上腹部MRI平扫+增强", "上腹部", 40, _PREP_MR_ABD, fasting=True, contrast="gadolinium"),
    _mr("MR-MRCP", "磁共振胰胆管成像 (MRCP)", "胆道胰管", 25, _PREP_MRCP, fasting=True),
    _mr("MR-PELVIS", "盆腔MRI平扫", "盆腔", 30, _PREP_MR_PELVIS),
    _mr(
        "MR-PROSTATE-C",
        "前列腺多参数MRI (平扫+增强)",
        "前列腺",
        35,
        _PREP_MR_PELVIS + "增强检查请携带肾功能检查结果。",
        contrast="gadolinium",
    ),
    # DR
    ExamType("DX-CHEST", "胸部正侧位片 (DR)", "DX", "RAD", "胸部", 5, _PREP_DX),
    ExamType("DX-LSPINE", "腰椎正侧位片 (DR)", "DX", "RAD", "腰椎", 5, _PREP_DX),
    ExamType("DX-KNEE", "双膝关节正侧位片 (DR)", "DX", "RAD", "膝关节", 5, _PREP_DX),
    ExamType("DX-KUB", "腹部平片 (KUB)", "DX", "RAD", "腹部", 5, _PREP_DX),
    ExamType(
        "DX-BARIUM", "上消化道钡餐造影", "DX", "RAD", "上消化道", 20, _PREP_BARIUM, fasting=True, contrast="barium"
    ),
    # Ultrasound
    _us("US-ABD-UPPER", "上腹部超声 (肝胆胰脾)", "上腹部", 15, _PREP_US_FASTING, fasting=True),
    _us("US-THYROID", "甲状腺及颈部淋巴结超声", "甲状腺", 10, _PREP_US_NONE),
    _us("US-BREAST", "双侧乳腺及腋窝淋巴结超声", "乳腺", 15, _PREP_US_NONE),
    _us("US-PELVIC", "盆腔超声 (经腹，子宫附件)", "盆腔", 15, _PREP_US_BLADDER, full_bladder=True),
    _us("US-URO", "泌尿系超声 (双肾、输尿管、膀胱、前列腺)", "泌尿系", 15, _PREP_US_BLADDER, full_bladder=True),
    _us("US-ECHO", "心脏彩超 (经胸超声心动图)", "心脏", 20, _PREP_US_ECHO),
    _us("US-CAROTID", "颈部血管超声 (颈动脉、椎动脉)", "颈部血管", 15, _PREP_US_NONE),
    _us("US-LEG-VEIN", "双下肢静脉超声", "下肢血管", 15, _PREP_US_NONE),
    _us("US-OB", "产科超声 (中晚孕)", "子宫及胎儿", 20, _PREP_US_OB),
    _us("US-OB-EARLY", "早孕超声 (经腹)", "子宫及附件", 10, _PREP_US_OB_EARLY, full_bladder=True),
    _us("US-CEUS-LIVER", "肝脏超声造影", "肝脏", 20, _PREP_CEUS, fasting=True, contrast="ultrasound"),
    # Endoscopy
    ExamType("ES-GASTRO", "胃镜检查", "ES", "ENDO", "上消化道", 15, _PREP_GASTRO, fasting=True),
    ExamType(
        "ES-GASTRO-PAINLESS",
        "无痛胃镜检查",
        "ES",
        "ENDO",
        "上消化道",
        20,
        _PREP_GASTRO_PAINLESS,
        fasting=True,
        anaesthesia=True,
    ),
    ExamType("ES-COLON", "结肠镜检查", "ES", "ENDO", "结直肠", 30, _PREP_COLON, fasting=True),
    ExamType(
        "ES-COLON-PAINLESS",
        "无痛结肠镜检查",
        "ES",
        "ENDO",
        "结直肠",
        40,
        _PREP_COLON_PAINLESS,
        fasting=True,
        anaesthesia=True,
    ),
    # ECG
    ExamType("ECG-REST", "常规十二导联心电图", "ECG", "ECG", "心脏", 5, _PREP_ECG),
    ExamType("ECG-HOLTER", "24小时动态心电图 (Holter)", "ECG", "ECG", "心脏", 10, _PREP_HOLTER),
    ExamType("ECG-ABPM", "24小时动态血压监测", "ECG", "ECG", "血压", 10, _PREP_ABPM),
    # A treadmill test takes 20-30 min, far above a resting ECG.
    ExamType("ECG-EXERCISE", "运动平板心电图", "ECG", "ECG", "心脏", 30, _PREP_EXERCISE),
)

# --------------------------------------------------------------------------------------------------
# Capabilities: which resource performs which exam
# --------------------------------------------------------------------------------------------------

_CT_ALL = ("CT1", "CT2", "CT3")
_US_GENERAL = ("US-ABD-UPPER", "US-URO", "US-PELVIC", "US-THYROID", "US-BREAST")

_CAPABILITY_MAP: dict[str, tuple[str, ...]] = {
    **{e.code: _CT_ALL for e in EXAM_TYPES if e.modality == "CT"},
    "CTA-CORO": ("CT1",),  # needs the dual-source scanner
    **{e.code: ("MR1", "MR2") for e in EXAM_TYPES if e.modality == "MR"},
    "DX-CHEST": ("DR1", "DR2"),
    "DX-LSPINE": ("DR1", "DR2"),
    "DX-KNEE": ("DR1", "DR2"),
    "DX-KUB": ("DR1", "DR2"),
    "DX-BARIUM": ("DR1",),  # needs the fluoroscopy-capable unit
    "US-ABD-UPPER": ("US01", "US02", "US07", "US08"),
    "US-URO": ("US01", "US02", "US07", "US08"),
    "US-PELVIC": ("US01", "US02", "US03", "US04", "US07", "US08"),
    "US-THYROID": ("US01", "US02", "US06", "US07", "US08"),
    "US-BREAST": ("US01", "US02", "US03", "US04", "US07", "US08"),
    "US-ECHO": ("US05", "US06"),
    "US-CAROTID": ("US05", "US06", "US07"),
    "US-LEG-VEIN": ("US01", "US05", "US06", "US07"),
    "US-OB": ("US03", "US04"),
    "US-OB-EARLY": ("US03", "US04"),
    "US-CEUS-LIVER": ("US02",),
    "ES-GASTRO": ("GS1", "GS2", "GS3"),
    "ES-GASTRO-PAINLESS": ("GS1", "GS2", "GS3"),
    "ES-COLON": ("CS1", "CS2"),
    "ES-COLON-PAINLESS": ("CS1", "CS2"),
    "ECG-REST": ("ECG1", "ECG2", "ECG3"),
    "ECG-HOLTER": ("ECG2", "ECG3"),
    "ECG-ABPM": ("ECG2", "ECG3"),
    "ECG-EXERCISE": ("ECG1",),
}

CAPABILITIES: tuple[tuple[str, str], ...] = tuple(
    (exam.code, resource_id) for exam in EXAM_TYPES for resource_id in _CAPABILITY_MAP[exam.code]
)

# --------------------------------------------------------------------------------------------------
# Slot templates
# --------------------------------------------------------------------------------------------------

_WEEKDAYS = (1, 2, 3, 4, 5)
_WEEKEND = (6, 7)


def _hm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _templates(
    resource_ids: tuple[str, ...],
    weekdays: tuple[int, ...],
    start: str,
    end: str,
    *,
    capacity: int,
    quotas: dict[str, int] | None = None,
    window_min: int = 30,
) -> list[SlotTemplate]:
    return [
        SlotTemplate(rid, day, _hm(start), _hm(end), window_min, capacity, dict(quotas or {}))
        for rid in resource_ids
        for day in weekdays
    ]


def _build_templates() -> tuple[SlotTemplate, ...]:
    rows: list[SlotTemplate] = []
    # CT: weekdays morning and afternoon with ward and emergency keep-backs; weekend mornings.
    ct_keep = {"ward": 1, "emergency": 1}
    rows += _templates(("CT1",), _WEEKDAYS, "08:00", "12:00", capacity=5, quotas=ct_keep)
    rows += _templates(("CT1",), _WEEKDAYS, "13:30", "17:30", capacity=5, quotas=ct_keep)
    rows += _templates(("CT2",), _WEEKDAYS, "08:00", "12:00", capacity=6, quotas={"ward": 2, "emergency": 1})
    rows += _templates(("CT2",), _WEEKDAYS, "13:30", "17:30", capacity=6, quotas={"ward": 2, "emergency": 1})
    rows += _templates(("CT1", "CT2"), _WEEKEND, "08:00", "12:00", capacity=4, quotas={"emergency": 1})
    rows += _templates(("CT3",), _WEEKDAYS, "08:00", "12:00", capacity=5, quotas={"checkup": 1, "emergency": 1})
    rows += _templates(("CT3",), _WEEKDAYS, "13:30", "17:30", capacity=5, quotas={"emergency": 1})
    rows += _templates(("CT3",), (6,), "08:00", "12:00", capacity=4, quotas={"checkup": 1})
    # MRI: long exams, small windows, evening sessions for working patients.
    rows += _templates(("MR1",), _WEEKDAYS, "08:00", "12:00", capacity=2, quotas={"ward": 1})
    rows += _templates(("MR1",), _WEEKDAYS, "13:00", "17:30", capacity=2, quotas={"ward": 1})
    rows += _templates(("MR1",), _WEEKDAYS, "18:00", "21:00", capacity=2, quotas={"self": 1})
    rows += _templates(("MR1",), _WEEKEND, "08:00", "12:00", capacity=2)
    rows += _templates(("MR2",), _WEEKDAYS, "08:00", "12:00", capacity=1)
    rows += _templates(("MR2",), _WEEKDAYS, "13:30", "17:30", capacity=1)
    rows += _templates(("MR2",), _WEEKDAYS, "18:00", "20:00", capacity=1)
    rows += _templates(("MR2",), (6,), "08:00", "12:00", capacity=1)
    # DR: high throughput.
    rows += _templates(("DR1",), _WEEKDAYS, "08:00", "12:00", capacity=10, quotas={"ward": 2, "emergency": 1})
    rows += _templates(("DR1",), _WEEKDAYS, "13:30", "17:30", capacity=10, quotas={"ward": 2, "emergency": 1})
    rows += _templates(("DR1",), _WEEKEND, "08:00", "12:00", capacity=6, quotas={"emergency": 1})
    rows += _templates(("DR2",), (*_WEEKDAYS, 6), "07:30", "11:30", capacity=10, quotas={"checkup": 4})
    rows += _templates(("DR2",), _WEEKDAYS, "13:30", "17:00", capacity=8, quotas={"clinic": 2})
    # Ultrasound: 3 per 30 min with a clinic (诊间) keep-back; echo rooms keep one place for wards.
    general_us = ("US01", "US02", "US03", "US04")
    rows += _templates(general_us, _WEEKDAYS, "08:00", "12:00", capacity=3, quotas={"clinic": 1})
    rows += _templates(general_us, _WEEKDAYS, "14:00", "17:30", capacity=3, quotas={"clinic": 1})
    rows += _templates(("US01", "US03"), (6,), "08:00", "12:00", capacity=3)
    rows += _templates(("US05", "US06"), _WEEKDAYS, "08:00", "12:00", capacity=2, quotas={"ward": 1})
    rows += _templates(("US05", "US06"), _WEEKDAYS, "14:00", "17:30", capacity=2, quotas={"ward": 1})
    rows += _templates(("US05",), (6,), "08:00", "12:00", capacity=2)
    rows += _templates(("US07", "US08"), (*_WEEKDAYS, 6), "07:30", "11:30", capacity=3, quotas={"checkup": 1})
    rows += _templates(("US07", "US08"), _WEEKDAYS, "14:00", "17:00", capacity=3, quotas={"clinic": 1})
    # Endoscopy: fasting exams, mornings only.
    rows += _templates(("GS1", "GS2", "GS3"), _WEEKDAYS, "08:00", "12:00", capacity=3, quotas={"ward": 1})
    rows += _templates(("GS2",), (6,), "08:00", "12:00", capacity=3)
    rows += _templates(("CS1", "CS2"), _WEEKDAYS, "08:00", "12:00", capacity=2, quotas={"ward": 1}, window_min=60)
    # ECG: fast, high capacity; the east room serves the check-up centre early in the morning.
    rows += _templates(("ECG1", "ECG2"), _WEEKDAYS, "08:00", "12:00", capacity=6, quotas={"ward": 1, "clinic": 1})
    rows += _templates(("ECG1", "ECG2"), _WEEKDAYS, "13:30", "17:00", capacity=6, quotas={"ward": 1, "clinic": 1})
    rows += _templates(("ECG2",), _WEEKEND, "08:00", "12:00", capacity=6, quotas={"emergency": 1})
    rows += _templates(("ECG3",), (*_WEEKDAYS, 6), "07:30", "11:30", capacity=6, quotas={"checkup": 2})
    rows += _templates(("ECG3",), _WEEKDAYS, "13:30", "17:00", capacity=6, quotas={"clinic": 1})
    return tuple(rows)


SLOT_TEMPLATES: tuple[SlotTemplate, ...] = _build_templates()

# --------------------------------------------------------------------------------------------------
# Patients (synthetic, deterministic)
# --------------------------------------------------------------------------------------------------

_SURNAMES = (
    "王",
    "李",
    "张",
    "刘",
    "陈",
    "杨",
    "黄",
    "赵",
    "吴",
    "周",
    "徐",
    "孙",
    "马",
    "朱",
    "胡",
    "郭",
    "何",
    "高",
    "林",
    "罗",
    "郑",
    "梁",
    "谢",
    "宋",
    "唐",
    "许",
    "韩",
    "冯",
    "邓",
    "曹",
    "彭",
    "曾",
    "萧",
    "田",
    "董",
    "潘",
)
_COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛")
_MALE_GIVEN = (
    "伟",
    "强",
    "磊",
    "军",
    "勇",
    "杰",
    "涛",
    "斌",
    "超",
    "明",
    "建国",
    "志强",
    "国华",
    "海涛",
    "俊杰",
    "文博",
    "子轩",
    "浩然",
    "宇航",
    "振华",
    "德明",
    "立新",
    "永刚",
    "家豪",
    "晓东",
    "建平",
    "卫东",
    "鹏飞",
)
_FEMALE_GIVEN = (
    "芳",
    "娜",
    "敏",
    "静",
    "丽",
    "艳",
    "娟",
    "霞",
    "婷",
    "雪",
    "秀英",
    "桂兰",
    "玉梅",
    "丽华",
    "晓燕",
    "春梅",
    "雅琪",
    "欣怡",
    "梦琪",
    "淑珍",
    "海燕",
    "慧敏",
    "思雨",
    "佳怡",
    "红梅",
    "美玲",
    "凤英",
    "晓雯",
)
# Real-looking district codes: Beijing Chaoyang, Shanghai Xuhui, Guangzhou Tianhe, Hangzhou Xihu,
# Nanjing Xuanwu, Wuhan Wuchang, Chengdu Wuhou.
_REGION_CODES = ("110105", "310104", "440106", "330106", "320102", "420106", "510107")
_PATIENT_COUNT = 60


def _make_id_number(rng: random.Random, region: str, born: date, gender: str) -> str:
    seq = rng.randrange(0, 100) * 10 + rng.choice((1, 3, 5, 7, 9) if gender == "M" else (0, 2, 4, 6, 8))
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + checksum_char(first17)


def _make_patients() -> tuple[Patient, ...]:
    rng = random.Random(_SEED)
    patients: list[Patient] = []
    used_names: set[str] = set()
    used_ids: set[str] = set()
    while len(patients) < _PATIENT_COUNT:
        i = len(patients)
        gender = "M" if rng.random() < 0.5 else "F"
        # One patient in twelve has a two-character surname, cycling through all of them.
        surname = _COMPOUND_SURNAMES[(i // 12) % len(_COMPOUND_SURNAMES)] if i % 12 == 5 else rng.choice(_SURNAMES)
        given = rng.choice(_MALE_GIVEN if gender == "M" else _FEMALE_GIVEN)
        name = surname + given
        # Ages 18-86 at the start of 2026.
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(0, (date(2008, 1, 1) - date(1940, 1, 1)).days))
        id_number = _make_id_number(rng, rng.choice(_REGION_CODES), born, gender)
        phone = "13" + f"{rng.randrange(0, 10**9):09d}"
        # One in ten pays out of pocket (自费) and has no insurance number.
        insurance = None if rng.random() < 0.1 else f"YB{id_number[:6]}{rng.randrange(0, 10**10):010d}"
        if name in used_names or id_number in used_ids:
            continue
        used_names.add(name)
        used_ids.add(id_number)
        patients.append(Patient(f"MRN{2600001 + i:07d}", name, gender, born, id_number, phone, insurance))
    return tuple(patients)


PATIENTS: tuple[Patient, ...] = _make_patients()

# --------------------------------------------------------------------------------------------------
# Pending exam orders
# --------------------------------------------------------------------------------------------------

_DOCTORS: dict[str, tuple[str, ...]] = {
    "GI": ("陈建华", "刘晓燕", "杨志远"),
    "CARD": ("黄国栋", "吴雅琴", "郑海波"),
    "SURG": ("周振宇", "孙立军"),
    "RESP": ("林秀梅", "高文斌"),
    "OBGYN": ("何丽萍", "罗静怡"),
    "URO": ("谢永明", "马俊峰"),
    "ENDOCR": ("梁慧君", "宋佳宁"),
    "NEURO": ("唐志刚", "许婉清"),
    "ER": ("韩磊", "冯雪"),
    "CHECKUP": ("邓美华", "曹建新"),
}
_WARD_OF = {"GI": "W-GI", "CARD": "W-CARD", "SURG": "W-SURG", "RESP": "W-RESP"}


class _Combo(msgspec.Struct, frozen=True):
    department_id: str
    exams: tuple[str, ...]
    note: str
    gender: str | None = None  # restrict to one gender
    max_age: int | None = None


# Realistic multi-exam work-ups, by ordering department.
_OUTPATIENT_COMBOS: tuple[_Combo, ...] = (
    _Combo(
        "GI", ("US-ABD-UPPER", "ES-GASTRO-PAINLESS", "CT-ABD-C", "ECG-REST"), "上腹痛2月伴体重下降，排查胃及胰腺病变"
    ),
    _Combo("GI", ("US-ABD-UPPER", "ES-GASTRO"), "反复上腹部不适、反酸嗳气"),
    _Combo("GI", ("US-ABD-UPPER", "ES-COLON-PAINLESS", "ECG-REST"), "大便习惯改变伴便血1月"),
    _Combo("GI", ("ES-GASTRO", "ES-COLON"), "贫血待查，粪便隐血阳性"),
    _Combo("GI", ("US-ABD-UPPER", "MR-MRCP"), "右上腹痛，肝功能异常，胆管结石待排"),
    _Combo("GI", ("US-CEUS-LIVER", "MR-ABD-C"), "乙肝病史，超声发现肝占位"),
    _Combo("GI", ("DX-BARIUM", "CT-ABD"), "吞咽不适，上消化道造影后复查腹部CT"),
    _Combo("CARD", ("ECG-REST", "US-ECHO"), "活动后胸闷气短"),
    _Combo("CARD", ("ECG-REST", "US-ECHO", "CTA-CORO"), "胸痛待查，冠心病可能"),
    _Combo("CARD", ("ECG-HOLTER", "US-ECHO"), "心悸，阵发性房颤待排"),
    _Combo("CARD", ("ECG-REST", "ECG-EXERCISE"), "劳力性胸痛，评估心肌缺血"),
    _Combo("CARD", ("ECG-ABPM", "US-CAROTID"), "高血压，评估血压控制及颈动脉斑块"),
    _Combo("SURG", ("US-ABD-UPPER", "CT-ABD-C"), "胆囊结石，术前评估"),
    _Combo("SURG", ("US-BREAST", "DX-CHEST"), "乳腺肿块待查", gender="F"),
    _Combo("SURG", ("US-THYROID", "CT-NECK-C"), "甲状腺结节，术前评估"),
    _Combo("SURG", ("US-LEG-VEIN",), "下肢静脉曲张"),
    _Combo("RESP", ("CT-CHEST", "ECG-REST"), "咳嗽咳痰1月"),
    _Combo("RESP", ("CT-CHEST-C", "DX-CHEST"), "肺结节随访，性质待定"),
    _Combo("RESP", ("CT-CHEST-LD",), "长期吸烟，肺癌筛查"),
    _Combo("OBGYN", ("US-PELVIC",), "月经不规律，子宫肌瘤随访", gender="F"),
    _Combo("OBGYN", ("US-OB-EARLY",), "停经7周，早孕待确认", gender="F", max_age=45),
    _Combo("OBGYN", ("US-OB",), "孕24周，系统超声筛查", gender="F", max_age=45),
    _Combo("OBGYN", ("US-PELVIC", "MR-PELVIS"), "附件包块待查", gender="F"),
    _Combo("URO", ("US-URO", "CT-KUB"), "腰痛伴血尿，泌尿系结石待排"),
    _Combo("URO", ("US-URO", "MR-PROSTATE-C"), "PSA升高，前列腺癌待排", gender="M"),
    _Combo("ENDOCR", ("US-THYROID", "CT-NECK-C"), "甲状腺肿大，评估结节及颈部淋巴结"),
    _Combo("ENDOCR", ("US-THYROID", "US-ABD-UPPER", "ECG-REST"), "2型糖尿病年度并发症筛查"),
    _Combo("ENDOCR", ("US-CAROTID", "US-LEG-VEIN", "ECG-REST"), "糖尿病血管并发症评估"),
    _Combo("NEURO", ("MR-HEAD", "CTA-HEAD"), "头晕，后循环缺血待排"),
    _Combo("NEURO", ("MR-HEAD-C", "US-CAROTID"), "反复头痛，颅内占位待排"),
    _Combo("NEURO", ("CT-HEAD", "MR-HEAD"), "一过性肢体无力"),
    _Combo("NEURO", ("MR-CSPINE", "MR-LSPINE"), "颈肩痛伴腰腿痛"),
    _Combo("NEURO", ("MR-LSPINE", "DX-LSPINE", "CT-LSPINE"), "腰痛伴左下肢放射痛"),
    _Combo("SURG", ("MR-KNEE", "DX-KNEE"), "膝关节疼痛，半月板损伤待排"),
    # Deliberate rule conflicts for the planner: two iodine exams; enhanced CT and enhanced MRI.
    _Combo("GI", ("CT-ABD-C", "CT-CHEST-C", "US-ABD-UPPER"), "胃癌术后复查"),
    _Combo("GI", ("CT-ABD-C", "MR-ABD-C"), "肝占位性质待定"),
)
_INPATIENT_COMBOS: tuple[_Combo, ...] = (
    _Combo("GI", ("US-ABD-UPPER", "ES-GASTRO-PAINLESS", "CT-ABD-C"), "上消化道出血，住院评估"),
    _Combo("GI", ("ES-COLON-PAINLESS", "CT-ABD-C", "ECG-REST"), "结肠占位，术前分期"),
    _Combo("GI", ("MR-MRCP", "US-ABD-UPPER"), "急性胰腺炎恢复期，病因评估"),
    _Combo("CARD", ("ECG-REST", "US-ECHO", "ECG-HOLTER"), "心力衰竭住院评估"),
    _Combo("CARD", ("US-ECHO", "CTA-CORO"), "不稳定型心绞痛"),
    _Combo("SURG", ("CT-ABD-C", "DX-CHEST", "ECG-REST"), "结肠癌术前评估"),
    _Combo("SURG", ("US-ABD-UPPER", "MR-MRCP", "ECG-REST"), "梗阻性黄疸"),
    _Combo("RESP", ("CT-CHEST-C", "US-ECHO", "ECG-REST"), "肺部感染伴呼吸衰竭"),
    _Combo("RESP", ("CT-CHEST", "US-LEG-VEIN"), "肺栓塞待排，评估下肢深静脉血栓"),
)
_EMERGENCY_COMBOS: tuple[_Combo, ...] = (
    _Combo("ER", ("CT-HEAD",), "头部外伤后头痛、呕吐"),
    _Combo("ER", ("CT-CHEST", "ECG-REST"), "急性胸痛"),
    _Combo("ER", ("CT-ABD", "US-ABD-UPPER"), "急性腹痛"),
    _Combo("ER", ("DX-CHEST", "ECG-REST"), "发热伴气促"),
)
_CHECKUP_COMBOS: tuple[_Combo, ...] = (
    _Combo("CHECKUP", ("DX-CHEST", "ECG-REST", "US-ABD-UPPER", "US-THYROID"), "年度健康体检 (基础套餐)"),
    _Combo("CHECKUP", ("CT-CHEST-LD", "ECG-REST", "US-ABD-UPPER", "US-URO"), "年度健康体检 (精英套餐)"),
    _Combo("CHECKUP", ("CT-CHEST-LD", "US-BREAST", "US-PELVIC", "US-THYROID"), "女性健康体检套餐", gender="F"),
)

_TARGET_ORDERS = 150
_AGE_REFERENCE = date(2026, 1, 1)


def _age(patient: Patient) -> int:
    born = patient.birth_date
    return _AGE_REFERENCE.year - born.year - ((_AGE_REFERENCE.month, _AGE_REFERENCE.day) < (born.month, born.day))


def _fits(combo: _Combo, patient: Patient) -> bool:
    if combo.gender is not None and combo.gender != patient.gender:
        return False
    return combo.max_age is None or _age(patient) <= combo.max_age


def _make_orders(patients: tuple[Patient, ...]) -> tuple[ExamOrder, ...]:
    rng = random.Random(_SEED + 1)
    orders: list[ExamOrder] = []
    ordered: dict[str, set[str]] = {p.mrn: set() for p in patients}

    def add(patient: Patient, combo: _Combo, patient_class: str, priority: str, bed: str | None) -> None:
        doctor = rng.choice(_DOCTORS[combo.department_id])
        ward = _WARD_OF[combo.department_id] if patient_class == "inpatient" else None
        for exam_code in combo.exams:
            if exam_code in ordered[patient.mrn]:  # one order per exam and patient
                continue
            ordered[patient.mrn].add(exam_code)
            orders.append(
                ExamOrder(
                    order_no=f"ORD2026{len(orders) + 1:06d}",
                    patient_mrn=patient.mrn,
                    exam_code=exam_code,
                    ordering_department_id=combo.department_id,
                    ordering_doctor=doctor,
                    patient_class=patient_class,
                    priority=priority,
                    ward_id=ward,
                    bed_no=bed if ward else None,
                    clinical_note=combo.note,
                )
            )

    def pick(combos: tuple[_Combo, ...], patient: Patient) -> _Combo:
        return rng.choice([c for c in combos if _fits(c, patient)])

    classes: dict[str, str] = {}
    used_beds: dict[str, set[int]] = {ward: set() for ward in _WARD_OF.values()}
    for i, patient in enumerate(patients):
        if i == 0:
            # The demo patient account: the classic GI work-up (US before gastroscopy, ECG before anaesthesia).
            classes[patient.mrn] = "outpatient"
            add(patient, _OUTPATIENT_COMBOS[0], "outpatient", "routine", None)
            continue
        roll = rng.random()
        if roll < 0.25:
            combo = pick(_INPATIENT_COMBOS, patient)
            free_beds = sorted(set(range(1, 46)) - used_beds[_WARD_OF[combo.department_id]])
            bed_number = rng.choice(free_beds)
            used_beds[_WARD_OF[combo.department_id]].add(bed_number)
            bed = f"{bed_number}床"
            classes[patient.mrn] = "inpatient"
            add(patient, combo, "inpatient", "urgent" if rng.random() < 0.3 else "routine", bed)
        elif roll < 0.31:
            classes[patient.mrn] = "emergency"
            add(patient, pick(_EMERGENCY_COMBOS, patient), "emergency", "emergency", None)
        elif roll < 0.40:
            classes[patient.mrn] = "checkup"
            add(patient, pick(_CHECKUP_COMBOS, patient), "checkup", "routine", None)
        else:
            classes[patient.mrn] = "outpatient"
            add(patient, pick(_OUTPATIENT_COMBOS, patient), "outpatient", "routine", None)

    # Top up to the target with a second outpatient work-up for some outpatients.
    outpatients = [p for p in patients[1:] if classes[p.mrn] == "outpatient"]
    while len(orders) < _TARGET_ORDERS:
        patient = rng.choice(outpatients)
        add(patient, pick(_OUTPATIENT_COMBOS, patient), "outpatient", "routine", None)
    return tuple(orders)


ORDERS: tuple[ExamOrder, ...] = _make_orders(PATIENTS)

# --------------------------------------------------------------------------------------------------
# Staff accounts (one per role)
# --------------------------------------------------------------------------------------------------

DEMO_PATIENT_MRN = PATIENTS[0].mrn

STAFF_ACCOUNTS: tuple[StaffAccount, ...] = (
    StaffAccount("doctor", "doctor", "王医生", "GI"),
    StaffAccount("nurse", "nurse", "李护士", "W-GI"),
    StaffAccount("clerk", "clerk", "赵预约员"),
    StaffAccount("tech", "technician", "孙技师", "RAD"),
    StaffAccount("deptadmin", "dept_admin", "周科室管理员", "RAD"),
    StaffAccount("depthead", "dept_head", "吴主任", "RAD"),
    StaffAccount("admin", "sys_admin", "系统管理员"),
    StaffAccount("auditor", "auditor", "钱审计员"),
    StaffAccount("patient", "patient", PATIENTS[0].name, patient_mrn=DEMO_PATIENT_MRN),
    StaffAccount("display", "display", "放射科候诊屏", "RAD"),
)


# Categories the rule table selects exams by (see app/planning/default_rules.json).
EXAM_TAGS: dict[str, tuple[str, ...]] = {
    "US-ABD-UPPER": ("upper_abdomen_us",),
    "US-THYROID": ("thyroid_us",),
    "ES-GASTRO": ("gastroscopy",),
    "ES-GASTRO-PAINLESS": ("gastroscopy",),
    "ES-COLON": ("colonoscopy",),
    "ES-COLON-PAINLESS": ("colonoscopy",),
    "DX-BARIUM": ("barium_meal",),
    "CT-ABD": ("abdominal_ct",),
    "CT-ABD-C": ("abdominal_ct",),
    "CT-KUB": ("abdominal_ct",),
    "MR-MRCP": ("biliary_imaging",),
}


def _patient_facts() -> dict[str, dict[str, object]]:
    """What the HIS told us about the demo patients: every one has declared implants (or none);
    those due for painless endoscopy passed the anaesthesia assessment, except one; and a few carry
    the facts the contraindication rules look for, chosen among patients whose orders they affect."""
    facts: dict[str, dict[str, object]] = {p.mrn: {"implants_declared": True} for p in PATIENTS}
    orders_of: dict[str, list[str]] = {}
    for o in ORDERS:
        orders_of.setdefault(o.patient_mrn, []).append(o.exam_code)
    painless = [m for m, codes in orders_of.items() if any(c.endswith("-PAINLESS") for c in codes)]
    for mrn in painless[:-1] if len(painless) > 1 else painless:
        facts[mrn]["anaesthesia_assessment"] = "passed"
    if len(painless) > 1:
        facts[painless[-1]]["anaesthesia_assessment"] = "pending"
    mri = [m for m, codes in orders_of.items() if any(c.startswith("MR-") for c in codes) and m != DEMO_PATIENT_MRN]
    iodine = [
        m
        for m, codes in orders_of.items()
        if any(c in ("CT-CHEST-C", "CT-NECK-C", "CT-ABD-C", "CTA-HEAD", "CTA-CORO") for c in codes)
        and m != DEMO_PATIENT_MRN
    ]
    if mri:
        facts[mri[0]]["pacemaker"] = True
    if len(mri) > 1:
        facts[mri[1]]["claustrophobia"] = True
    if iodine:
        facts[iodine[0]]["iodine_allergy"] = True
    if len(iodine) > 1:
        facts[iodine[1]]["egfr"] = 25
    return facts


PATIENT_FACTS: dict[str, dict[str, object]] = _patient_facts()
