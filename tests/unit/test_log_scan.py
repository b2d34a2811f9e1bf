"""The log scan that guards every test (tests/conftest.py) finds what it must."""

from __future__ import annotations

from app.demo.data import PATIENTS
from tests.conftest import personal_data_in


def test_the_scan_finds_id_numbers_phones_and_names_and_leaves_ids_and_times_alone() -> None:
    who = next(p for p in PATIENTS if p.id_number)
    assert personal_data_in(f"looked up {who.id_number}") == [who.id_number]
    assert personal_data_in("sms to 13812345678 sent") == ["13812345678"]
    assert personal_data_in(f"patient {who.name} booked") == [who.name]
    assert personal_data_in("created 测试患者12") == ["测试患者12"]
    assert personal_data_in("appointment 123 at 1796000000000 ms, slot 4567, MSH-10 HY136, A0000000123") == []
    # a hold id (hex) with eleven digits in a row is not a phone; a phone after "=" or a CJK word is
    assert personal_data_in("reaper released hold 27f97b71e0984080b465b14628202146-0") == []
    assert personal_data_in("phone=13812345678") == ["13812345678"]
    assert personal_data_in("电话13812345678已发送") == ["13812345678"]
