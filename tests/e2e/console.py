"""Drives the tenant console in Debian's chromium (headless) with selenium.

    console.py BASE_URL TOKEN QUEUE_ID OTHER_QUEUE_ID SHOTS_DIR LOGIN PASSWORD

Signs in with the tenant token, finds QUEUE_ID by its recipient
(reader@example.net) and opens its timeline, opens it in
the sandbox, rolls back the function `router`, and looks up
OTHER_QUEUE_ID (another tenant's message), which must not be shown;
then signs out and in again with the SMTP login.
Saves a screenshot of each step in SHOTS_DIR; prints what it saw; exits
non-zero (an exception) when a step does not show what it should.
"""

import os
import sys

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

base, token, queue_id, other_id, shots, login, password = sys.argv[1:8]
os.makedirs(shots, exist_ok=True)

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
# The page re-renders its tables as answers arrive: an element found just
# before may be replaced, which only means "look again".
wait = WebDriverWait(
    driver, 20, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
)


def shot(name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))


def text(element_id):
    return driver.find_element(By.ID, element_id).text


try:
    driver.get(base + "/console")
    driver.find_element(By.ID, "token").send_keys(token)
    shot("1-sign-in")
    driver.find_element(By.ID, "signin-button").click()
    wait.until(ec.visibility_of_element_located((By.ID, "app")))
    print("signed in as", text("tenant-name"))

    # Found by its recipient, then its timeline.
    driver.find_element(By.ID, "s-recipient").send_keys("reader@example.net")
    driver.find_element(By.ID, "search-button").click()
    found = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"#results tr[data-id='{queue_id}']")))
    print("found:", found.text)
    shot("2-search")
    found.click()
    wait.until(lambda d: "delivered_to_sandbox" in text("timeline"))
    timeline = text("timeline")
    assert "received" in timeline, timeline
    print("timeline:", timeline.replace("\n", " | "))
    shot("3-timeline")

    # The sandbox: the message in the list, then opened.
    driver.find_element(By.CSS_SELECTOR, "nav button[data-tab=sandbox]").click()
    row = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"#inbox tr[data-id='{queue_id}']")))
    row.click()
    wait.until(lambda d: text("v-subject") != "")
    subject = text("v-subject")
    frame = driver.find_element(By.ID, "v-html")
    assert frame.get_attribute("sandbox") == "", "the HTML frame must be sandboxed"
    print("opened:", subject, "| text:", text("v-text")[:60].replace("\n", " "))
    shot("4-sandbox-message")

    # Functions: roll back the router.
    driver.find_element(By.CSS_SELECTOR, "nav button[data-tab=functions]").click()
    wait.until(ec.element_to_be_clickable((By.ID, "rollback-router")))
    before = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "tr[data-function=router]").text)
    shot("5-functions")
    driver.find_element(By.ID, "rollback-router").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "tr[data-function=router]").text != before)
    after = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "tr[data-function=router]").text)
    print("router before:", before, "| after:", after)
    shot("6-rolled-back")

    # Another tenant's message is not shown.
    driver.find_element(By.CSS_SELECTOR, "nav button[data-tab=messages]").click()
    box = driver.find_element(By.ID, "queue-id")
    box.clear()
    box.send_keys(other_id)
    driver.find_element(By.ID, "lookup-button").click()
    wait.until(lambda d: text("lookup-error") != "")
    assert text("timeline") == "", "another tenant's timeline was shown"
    print("other tenant's message:", text("lookup-error"))
    shot("7-other-tenant")

    # Out, and in again with an SMTP login instead of the token.
    driver.find_element(By.ID, "signout").click()
    wait.until(ec.visibility_of_element_located((By.ID, "signin")))
    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    wait.until(ec.visibility_of_element_located((By.ID, "app")))
    print("signed in with the SMTP login as", text("tenant-name"))
    shot("8-smtp-login")
finally:
    driver.quit()
