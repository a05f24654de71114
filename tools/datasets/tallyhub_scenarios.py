"""Support scenarios for Tallyhub, a fictional invoicing and bookkeeping web app that also sells a
card reader and a receipt printer. Written by the lora-tune authors (CC0).

Each scenario is one kind of ticket: the department it belongs to, several ways a customer opens
it, and either a direct answer or a clarifying question, several follow-ups and a resolution.
`{slot}` fields are filled from SLOTS. House policy, used consistently across scenarios:

- Plans: Starter $12/month (1 user), Team $29/month (up to 5 users), Business $59/month
  (unlimited users). Annual billing gets two months free. Duplicate charges are refunded to the
  same card within 5–10 business days; an annual plan cancelled within 14 days of renewal is
  refunded in full.
- Hardware: the Tallyhub Card Reader ($49) and Receipt Printer ($89). Orders ship within 2
  business days; standard delivery 3–5 business days (free), express 1–2 business days ($9).
  Returns within 30 days with a prepaid label from Orders → Return item; 12-month warranty.
  A parcel with no tracking movement for 5 business days gets a carrier investigation and an
  immediate replacement.
- Password reset links last 30 minutes. Lost two-factor device: a recovery code, otherwise an
  identity check by the security team (within 1 business day). Bank connections are re-confirmed
  every 90 days. Closed accounts are kept 60 days, then deleted.
"""

SYSTEM = (
    "You are the support assistant for Tallyhub, an invoicing and bookkeeping web app for small "
    "businesses. Answer in a friendly, concise way, give concrete steps, and escalate to a human "
    "when money or data may be lost."
)

SLOTS = {
    "order": ["TH-48213", "TH-50177", "TH-39420", "TH-61538", "TH-44902", "TH-57761"],
    "inv": ["INV-1042", "INV-2210", "INV-0387", "INV-1519", "INV-3076", "INV-0921"],
    "amount": ["$29", "$59", "$348", "$12", "$708", "$29"],
    "month": ["March", "June", "September", "January", "November", "April"],
    "client": ["Harbor Dental", "Green Leaf Cafe", "Novak & Sons", "Bright Path Tutoring",
               "Mesa Plumbing", "Studio Kline"],
    "bank": ["Chase", "Barclays", "Wells Fargo", "Monzo", "ING", "TD Bank"],
    "browser": ["Chrome", "Safari", "Firefox", "Edge", "Chrome", "Safari"],
    "device": ["card reader", "receipt printer", "card reader", "receipt printer", "card reader",
               "card reader"],
    "city": ["Leeds", "Austin", "Toronto", "Denver", "Bristol", "Portland"],
}

SCENARIOS = [
    # ---------------------------------------------------------------- billing
    dict(
        area="billing",
        openings=[
            "I was charged {amount} twice this month.",
            "There are two identical charges of {amount} on my card from Tallyhub.",
            "Why did you bill me twice for {month}??",
            "Double charge on my statement for the {month} subscription, please fix.",
        ],
        ask="Sorry about that — let's sort it out. Could you tell me the last four digits of the "
            "card that was charged and the date of the second charge?",
        followups=[
            "Card ending 4417, both charges on the 3rd.",
            "It's the Visa ending 0925. The second one came a day after the first.",
            "Mastercard ending 1188, charged on the 12th and again on the 13th.",
        ],
        resolve="Thank you. I can see the duplicate payment, and I've refunded the second charge to "
                "the same card. Refunds take 5–10 business days to appear, depending on your "
                "bank, and you'll get an email with the refund reference today. If it hasn't "
                "arrived after 10 business days, reply here and I'll chase our payments team.",
    ),
    dict(
        area="billing",
        openings=[
            "How much is the Team plan?",
            "What's the price difference between Starter and Team?",
            "Can you explain your pricing? I have three people who need access.",
            "Is there a discount if I pay yearly?",
        ],
        answer="Here's how our plans work:\n- Starter: $12/month, one user.\n- Team: $29/month, "
               "up to 5 users.\n- Business: $59/month, unlimited users.\nPaying annually gives "
               "you two months free on any plan. With three people, Team is the right fit — you "
               "can switch under Settings → Plan & billing → Change plan at any time.",
    ),
    dict(
        area="billing",
        openings=[
            "I renewed the annual plan by accident. Can I get my money back?",
            "My subscription auto-renewed for a full year ({amount}) and I don't need it anymore.",
            "I forgot to cancel before the yearly renewal. Is a refund possible?",
        ],
        ask="I can help with that. When did the renewal go through? If it was within the last 14 "
            "days, the whole year can be refunded.",
        followups=[
            "It renewed five days ago.",
            "Last week, on the {month} 2nd.",
            "About ten days ago I think.",
        ],
        resolve="That's within the 14-day window, so I've cancelled the renewal and issued a full "
                "refund of the annual charge to your card; it takes 5–10 business days to show "
                "up. Your account stays open on the free read-only mode, so your invoices and "
                "reports remain available for export whenever you need them.",
    ),
    dict(
        area="billing",
        openings=[
            "My payment failed and now the account says past due.",
            "I got an email that my card payment for {month} failed.",
            "Tallyhub says my subscription payment was declined. What now?",
        ],
        answer="No problem — nothing is lost. Go to Settings → Plan & billing → Payment method, "
               "update the card (or re-enter it if the expiry date changed) and click Retry "
               "payment. Your account keeps working for 7 days after a failed payment, so there's "
               "time to fix it. If your bank declines again, they can tell you why; we only see "
               "'declined'.",
    ),
    dict(
        area="billing",
        openings=[
            "Can I get an invoice for my subscription with our VAT number on it?",
            "Our finance team needs our VAT ID on Tallyhub receipts.",
            "How do I add a company tax number to my billing receipts?",
        ],
        answer="Yes. Go to Settings → Plan & billing → Billing details and enter your company name, "
               "address and VAT number. Every receipt from then on will include them. To update "
               "past receipts, open Billing history, click the receipt and choose Regenerate — the "
               "new PDF shows the VAT number too.",
    ),
    dict(
        area="billing",
        openings=[
            "I want to downgrade from Business to Team.",
            "Can I move to a cheaper plan? We only have two users now.",
            "How do I switch back to Starter?",
        ],
        answer="You can change plans yourself under Settings → Plan & billing → Change plan. A "
               "downgrade takes effect at the end of the current billing period, so you keep your "
               "current features until then, and the unused difference is not charged again. "
               "Before downgrading, make sure your team size fits the new plan (Starter is one "
               "user, Team up to five) — extra members will be asked to leave.",
    ),
    # ---------------------------------------------------------------- account
    dict(
        area="account",
        openings=[
            "I lost my phone and can't log in because of two-factor authentication.",
            "My authenticator app was on my old phone. How do I get into my account?",
            "Locked out — 2FA codes are on a phone that broke.",
        ],
        ask="Sorry to hear that. Do you still have the recovery codes you saved when you turned "
            "on two-factor authentication?",
        followups=[
            "Yes, I printed them somewhere.",
            "No, I never saved them.",
            "I'm not sure, I might have them in my password manager.",
        ],
        resolve="If you have them, enter one of the recovery codes on the login screen instead of "
                "the 6-digit code, then set up two-factor again under Settings → Security with "
                "your new phone. If you can't find them, reply with your account email and I'll "
                "pass you to our security team: they verify your identity and reset two-factor "
                "within 1 business day. We never turn it off without that check.",
    ),
    dict(
        area="account",
        openings=[
            "The password reset link says it has expired.",
            "I clicked reset password but the link doesn't work anymore.",
            "Reset link expired before I could use it.",
        ],
        answer="Reset links are valid for 30 minutes and only the newest one works. Request a new "
               "link from the login page, then open the latest email straight away (older links "
               "stop working as soon as a new one is sent). If the email doesn't arrive within a "
               "few minutes, check your spam folder for no-reply@tallyhub.app.",
    ),
    dict(
        area="account",
        openings=[
            "How do I transfer ownership of our account to my business partner?",
            "I'm leaving the company and need to hand the Tallyhub account to my colleague.",
            "Can I make someone else the account owner?",
        ],
        answer="The current owner can do this under Settings → Team: invite your partner if they "
               "aren't a member yet, then click the three dots next to their name and choose Make "
               "owner. They confirm by email, and billing moves to them at the next renewal. Once "
               "the transfer is done, you can remove yourself or stay on as a regular member.",
    ),
    dict(
        area="account",
        openings=[
            "I want to close my account and delete everything.",
            "Please delete my Tallyhub account.",
            "How do I permanently remove my data from Tallyhub?",
        ],
        ask="I can help with that. Before we start: would you like to export your invoices, "
            "clients and reports first? Once the account is deleted they can't be recovered.",
        followups=[
            "Yes, how do I export?",
            "No, I already have copies. Just delete it.",
            "I exported last month, that's enough.",
        ],
        resolve="To export, go to Settings → Data → Export all and you'll get a ZIP with CSV files "
                "and invoice PDFs. Then the account owner can close the account under Settings → "
                "Plan & billing → Close account. We keep the data for 60 days in case you change "
                "your mind, then delete it permanently; if you need it deleted sooner, reply here "
                "and I'll ask our privacy team to do it within 7 days.",
    ),
    dict(
        area="account",
        openings=[
            "I got an email saying someone logged in from {city}. That wasn't me.",
            "There's a login on my account I don't recognise.",
            "Suspicious sign-in alert on my account — please help.",
        ],
        answer="Thank you for telling us straight away. Please change your password now and turn "
               "on two-factor authentication under Settings → Security. Then click Sign out of all "
               "devices on the same page, which ends every other session. I've also flagged your "
               "account for our security team, who will check recent activity and email you within "
               "1 business day if anything was changed.",
    ),
    dict(
        area="account",
        openings=[
            "How do I remove a former employee from our account?",
            "Someone left the team, how do I take away their access?",
            "Can I stop an old staff member from logging in?",
        ],
        answer="Go to Settings → Team, click the three dots next to their name and choose Remove "
               "member. They lose access immediately, but everything they created — invoices, "
               "expenses, notes — stays in your account. On the Team plan, removing them also frees "
               "a seat for someone new.",
    ),
    # ---------------------------------------------------------------- invoicing
    dict(
        area="invoicing",
        openings=[
            "{client} says they never received invoice {inv}.",
            "My client didn't get the invoice email for {inv}.",
            "Invoice {inv} shows as sent but the client can't find it.",
        ],
        ask="Let's check the delivery. Can you open {inv} and tell me what the activity log at the "
            "bottom says about the email?",
        followups=[
            "It says 'Delivered' yesterday.",
            "It says 'Bounced'.",
            "It just says 'Sent', nothing after that.",
        ],
        resolve="Thanks. If it says Delivered or Sent, the email reached their server — ask them to "
                "check spam and to add invoices@tallyhub.app to their contacts. If it says Bounced, "
                "the address is wrong: fix it under Clients → Edit and click Resend on the invoice. "
                "You can also click Copy link on the invoice and send the link yourself — it always "
                "shows the latest version.",
    ),
    dict(
        area="invoicing",
        openings=[
            "I sent invoice {inv} with the wrong amount. How do I fix it?",
            "There's a mistake on an invoice I already sent.",
            "Can I edit {inv} after sending it?",
        ],
        answer="Yes. Open the invoice and click Edit — you can change line items, amounts and "
               "dates even after it was sent, as long as no payment has been recorded. Save it and "
               "click Resend so the client gets the corrected version; the old link shows the new "
               "amounts too. If a payment was already recorded, void the invoice and issue a credit "
               "note instead so your books stay correct.",
    ),
    dict(
        area="invoicing",
        openings=[
            "How do I issue a credit note?",
            "A client returned part of an order. How do I refund them on paper?",
            "I need to credit {client} for {amount}.",
        ],
        answer="Open the original invoice and click More → Create credit note. Choose the lines or "
               "enter the amount to credit, add a reason, and send it. The credit note gets its own "
               "number, is linked to the invoice, and reduces the balance the client owes. If the "
               "client has already paid, record the refund on the credit note once you've paid it "
               "back.",
    ),
    dict(
        area="invoicing",
        openings=[
            "Can invoices be paid in instalments?",
            "A client wants to pay {inv} in three parts.",
            "How do I set up a payment plan on an invoice?",
        ],
        answer="Yes. Open the invoice, click More → Payment schedule and split the total into "
               "instalments with their own due dates. The client sees the schedule on the invoice, "
               "reminders follow each due date, and each payment you record reduces the balance. "
               "The invoice shows as Partially paid until the last instalment arrives.",
    ),
    dict(
        area="invoicing",
        openings=[
            "The late fee isn't being added to overdue invoices.",
            "How do I charge interest on late payments?",
            "Can Tallyhub add a late fee automatically?",
        ],
        answer="Late fees are off by default. Turn them on under Settings → Invoices → Late fees and "
               "choose a fixed amount or a monthly percentage, plus how many days after the due "
               "date they apply. They're added to invoices that become overdue from then on — not "
               "to invoices that were already overdue — and the client sees the fee as its own "
               "line.",
    ),
    dict(
        area="invoicing",
        openings=[
            "How do I mark an invoice as paid when the client paid in cash?",
            "{client} paid {inv} by cheque. How do I record that?",
            "Client paid outside Tallyhub, how do I close the invoice?",
        ],
        answer="Open the invoice and click Record payment. Enter the amount, the date you received "
               "it and choose the method (cash, cheque or bank transfer). If it covers the full "
               "amount, the invoice is marked Paid and stops sending reminders; otherwise it shows "
               "as Partially paid with the remaining balance.",
    ),
    # ---------------------------------------------------------------- integrations
    dict(
        area="integrations",
        openings=[
            "My {bank} bank feed stopped importing transactions.",
            "Transactions from {bank} haven't synced for a week.",
            "Bank connection with {bank} shows an error.",
        ],
        ask="Sorry about that. What does Banking → Connections show next to your {bank} account — "
            "'Reconnect needed', or an error message?",
        followups=[
            "It says Reconnect needed.",
            "It shows 'Error 403 from bank'.",
            "It says Connected but nothing new is coming in.",
        ],
        resolve="Banks ask you to re-confirm access every 90 days, which shows as Reconnect needed: "
                "click Reconnect and log in through your bank's page, and the missing transactions "
                "import within an hour. An error from the bank usually means a consent change on "
                "their side; reconnecting fixes most cases. If it still says Connected with no new "
                "data after reconnecting, reply here with the account name and I'll open a case "
                "with our bank-feed provider.",
    ),
    dict(
        area="integrations",
        openings=[
            "Stripe payments aren't marking my invoices as paid.",
            "A client paid {inv} through Stripe but it still shows unpaid.",
            "Stripe sync seems broken.",
        ],
        answer="Stripe payments mark invoices as paid automatically within a few minutes. If that "
               "doesn't happen, go to Settings → Payments → Stripe and check it says Connected; if "
               "it says Action needed, click Reconnect. Payments made while the connection was "
               "broken are imported once it's restored. You can always record the payment by hand "
               "with Record payment in the meantime.",
    ),
    dict(
        area="integrations",
        openings=[
            "Can I import my data from QuickBooks?",
            "We're moving from Xero. Can we bring our invoices over?",
            "How do I migrate from another accounting tool?",
        ],
        answer="Yes. Go to Settings → Data → Import and choose QuickBooks or Xero: you'll log in to "
               "your old tool and Tallyhub imports clients, products, invoices and payments. For "
               "other tools, export them to CSV and use the templates on the same page. The import "
               "runs in the background and emails you a summary, including anything it skipped.",
    ),
    dict(
        area="integrations",
        openings=[
            "Does Tallyhub work with PayPal?",
            "Can clients pay my invoices with PayPal?",
            "How do I connect PayPal?",
        ],
        answer="Yes. Go to Settings → Payments → PayPal and click Connect, then log in to your "
               "PayPal business account. From then on invoices show a Pay with PayPal button, and "
               "payments are recorded automatically. PayPal's own fees apply; Tallyhub adds no "
               "extra fee.",
    ),
    dict(
        area="integrations",
        openings=[
            "Is there an API?",
            "Can I connect Tallyhub to Zapier?",
            "We want to create invoices from our own system automatically.",
        ],
        answer="Yes. The Business plan includes the REST API: create a key under Settings → "
               "Developers → API keys and see the documentation linked there. On every plan you "
               "can also use our Zapier app to create invoices or clients from other tools without "
               "code.",
    ),
    # ---------------------------------------------------------------- shipping (hardware)
    dict(
        area="shipping",
        openings=[
            "Where is my order {order}?",
            "I ordered a {device} a week ago and it hasn't arrived.",
            "Order {order} still hasn't shown up.",
            "Any update on my {device} delivery?",
        ],
        ask="Let me check. Have you received the shipping email with a tracking number, and if so, "
            "what does the tracking page say?",
        followups=[
            "Yes, tracking says in transit but it hasn't moved for 6 days.",
            "I never got a shipping email.",
            "It says delivered, but there's nothing here.",
        ],
        resolve="Thanks. Orders ship within 2 business days and standard delivery takes 3–5 business "
                "days. If tracking hasn't moved for 5 business days, or says delivered when it "
                "wasn't, I'll open an investigation with the carrier and ship a replacement right "
                "away at no cost — you don't need to wait for the investigation. If you never got a "
                "shipping email, check Orders in your account: the tracking number is there too.",
    ),
    dict(
        area="shipping",
        openings=[
            "How long does shipping take for the card reader?",
            "Do you ship the receipt printer to {city}?",
            "Can I get the {device} faster?",
        ],
        answer="Orders ship within 2 business days from our warehouse. Standard delivery is free "
               "and takes 3–5 business days; express takes 1–2 business days for $9. You'll get a "
               "tracking number by email as soon as the parcel leaves, and you can follow it under "
               "Orders in your account.",
    ),
    dict(
        area="shipping",
        openings=[
            "I want to return the {device} I bought.",
            "Can I send back my {device}? I don't need it.",
            "How do returns work for hardware?",
        ],
        ask="Of course. How long ago did you receive it? Hardware can be returned within 30 days "
            "of delivery.",
        followups=[
            "Two weeks ago.",
            "It arrived last Monday.",
            "About two months ago.",
        ],
        resolve="Within 30 days you can return it for a full refund: go to Orders, choose the order "
                "and click Return item to print a prepaid label, pack the device with its cable, "
                "and drop it off with the carrier. The refund reaches your card within 5–10 "
                "business days of the parcel arriving back. After 30 days returns aren't possible, "
                "but the 12-month warranty still covers faults.",
    ),
    dict(
        area="shipping",
        openings=[
            "My card reader arrived damaged.",
            "The {device} box was crushed and the device doesn't turn on.",
            "Order {order} came broken.",
        ],
        answer="I'm sorry it arrived like that. Please reply with a photo of the device and the "
               "packaging, and I'll ship a replacement by express at no cost as soon as I see it — "
               "you don't have to send the damaged one back first. The replacement comes with its "
               "own tracking number and the full 12-month warranty.",
    ),
    dict(
        area="shipping",
        openings=[
            "Can I change the delivery address for order {order}?",
            "I put the wrong address on my hardware order.",
            "We moved office — can you send order {order} to the new address?",
        ],
        answer="If the order hasn't shipped yet, yes: open Orders, choose the order and click Edit "
               "address — this is possible until it leaves the warehouse (orders ship within 2 "
               "business days). Once it has shipped, reply here with the new address and I'll ask "
               "the carrier to redirect it; most carriers can, for parcels not yet out for "
               "delivery.",
    ),
    # ---------------------------------------------------------------- technical
    dict(
        area="technical",
        openings=[
            "The card reader won't pair with my phone.",
            "My Tallyhub {device} doesn't connect over Bluetooth.",
            "Bluetooth pairing with the reader keeps failing.",
        ],
        ask="Let's get it paired. Which phone are you using, and is the Tallyhub app updated to the "
            "latest version?",
        followups=[
            "iPhone 13, app updated yesterday.",
            "A Samsung Galaxy, not sure about the app version.",
            "Pixel 7, latest version.",
        ],
        resolve="Thanks. Please try this: hold the reader's button for 10 seconds until the light "
                "blinks blue, forget the reader in your phone's Bluetooth settings, then pair it "
                "from the app under Settings → Hardware → Add device (not from the phone's own "
                "Bluetooth menu). Make sure the app has Bluetooth and location permission. If it "
                "still fails, the 12-month warranty covers it — reply here and I'll send a "
                "replacement.",
    ),
    dict(
        area="technical",
        openings=[
            "The invoice PDF won't download in {browser}.",
            "When I click Download PDF nothing happens.",
            "PDFs of my invoices are blank in {browser}.",
        ],
        answer="This is usually the browser blocking the download. Please allow pop-ups and "
               "downloads for app.tallyhub.app, or try a private window to rule out an extension "
               "such as an ad blocker. If it still fails, open the invoice and use More → Email me "
               "the PDF, and reply here with your browser version so we can reproduce it.",
    ),
    dict(
        area="technical",
        openings=[
            "Tallyhub is really slow today.",
            "Pages take forever to load in {browser}.",
            "The app keeps timing out.",
        ],
        ask="Sorry about that. Is it slow everywhere in the app, or on one page in particular — for "
            "example Reports or Banking?",
        followups=[
            "Mostly the Reports page.",
            "Everything is slow.",
            "Only when I open the invoice list.",
        ],
        resolve="Thanks, that helps. Reports over long periods and very long lists load faster with "
                "a narrower date range or a filter, so try that first. If the whole app is slow, "
                "check status.tallyhub.app for incidents, clear your browser cache, and try another "
                "browser. If it continues, reply with the time it happened and what you clicked, "
                "and I'll pass it to our engineers with your account's logs.",
    ),
    dict(
        area="technical",
        openings=[
            "The receipt printer prints gibberish.",
            "My Tallyhub receipt printer prints random characters.",
            "Receipts come out garbled.",
        ],
        answer="That usually means the printer is set to the wrong mode after a firmware update. "
               "In the app, go to Settings → Hardware → Receipt printer and click Reset printer "
               "settings, then print a test receipt. If it still prints garbled text, turn the "
               "printer off, hold the feed button while turning it on, and release after the test "
               "page. Still wrong? It's covered by the 12-month warranty — reply and I'll replace "
               "it.",
    ),
    dict(
        area="technical",
        openings=[
            "I can't upload receipts in the mobile app.",
            "Photo upload of expenses fails on my phone.",
            "The app crashes when I scan a receipt.",
        ],
        answer="Please update the Tallyhub app to the latest version and check it has permission "
               "to use the camera and photos in your phone's settings. Receipts must be under 10 MB; "
               "very large photos fail to upload, so switching the camera to a lower resolution "
               "helps. If it still crashes, reply with your phone model and app version and we'll "
               "look into it.",
    ),
    # ---------------------------------------------------------------- more of each
    dict(
        area="billing",
        openings=[
            "My free trial ended and I was charged {amount} without warning.",
            "I didn't mean to start a paid plan after the trial.",
            "Charged right after the trial — I wanted to cancel.",
        ],
        ask="Sorry for the surprise. We email a reminder three days before a trial ends, but I "
            "understand it's easy to miss. Did you use the account after the charge, for example "
            "by sending an invoice?",
        followups=[
            "No, I haven't logged in since.",
            "I sent one invoice yesterday.",
            "No, nothing at all.",
        ],
        resolve="Thanks for checking. If the account hasn't been used since the charge, I've "
                "cancelled the plan and refunded the full amount — it reaches your card in 5–10 "
                "business days. If you did use it, I've cancelled the renewal so you won't be "
                "charged again, and you keep paid access until the end of this month. Either way "
                "your data stays available to export.",
    ),
    dict(
        area="account",
        openings=[
            "Can I log in with Google instead of a password?",
            "How do I link my Google account to Tallyhub?",
            "Is single sign-on supported?",
        ],
        answer="Yes. Go to Settings → Security → Sign-in methods and click Connect Google. After "
               "that you can use Continue with Google on the login page; your password keeps "
               "working as a fallback unless you remove it. Company-wide single sign-on (SAML) is "
               "available on the Business plan.",
    ),
    dict(
        area="invoicing",
        openings=[
            "Can I invoice a client in euros while my account is in dollars?",
            "How do I bill {client} in a different currency?",
            "One of my clients needs invoices in GBP.",
        ],
        answer="Yes. Open the client, go to Edit → Billing currency and choose the currency; every "
               "new invoice for that client uses it. Reports convert foreign-currency invoices to "
               "your account currency at the exchange rate on the invoice date, so totals stay "
               "consistent. Your own subscription currency doesn't change.",
    ),
    dict(
        area="integrations",
        openings=[
            "The bank feed imported the same transactions twice.",
            "I see duplicate transactions from {bank}.",
            "Every payment from {bank} shows up two times.",
        ],
        answer="Duplicates usually appear after a bank connection is removed and added again. Go "
               "to Banking → Transactions, click Find duplicates, review the pairs it suggests and "
               "click Merge — matched invoices and categories are kept. To stop it happening "
               "again, use Reconnect on the existing connection rather than adding the bank a "
               "second time.",
    ),
    dict(
        area="shipping",
        openings=[
            "Do you ship the card reader internationally?",
            "Will I have to pay customs on the {device}?",
            "Can I order hardware from outside the US?",
        ],
        answer="We ship the card reader and receipt printer to the US, Canada, the UK and the EU. "
               "Prices include import duties and taxes for those destinations, so there's nothing "
               "extra to pay on delivery. International orders also ship within 2 business days; "
               "delivery takes 5–8 business days with tracking.",
    ),
    dict(
        area="shipping",
        openings=[
            "I want to cancel my hardware order {order}.",
            "Please cancel order {order}, I ordered twice by mistake.",
            "Can I still cancel the {device} I ordered this morning?",
        ],
        ask="I can check that for you. Has the order been marked as shipped in your Orders page "
            "yet?",
        followups=[
            "No, it still says Processing.",
            "It says Shipped.",
            "I'm not sure where to look.",
        ],
        resolve="You'll find it under Orders in your account. While it says Processing I can cancel "
                "it and refund you in full right away — just confirm here. If it has already "
                "shipped, it can't be stopped, but you can return it within 30 days with the "
                "prepaid label from Orders → Return item for a full refund.",
    ),
    dict(
        area="technical",
        openings=[
            "I'm not getting any email notifications from Tallyhub.",
            "Payment notifications stopped arriving in my inbox.",
            "Why don't I get an email when a client pays?",
        ],
        ask="Let's check your settings. Under Settings → Notifications, is Email turned on for "
            "'Payment received'?",
        followups=[
            "Yes, it's on.",
            "It was off, I just turned it on.",
            "I can't find that page.",
        ],
        resolve="If it's on and nothing arrives, check your spam folder and add notifications@"
                "tallyhub.app to your contacts; some company mail filters hold our emails. The "
                "page is under your name in the top-right corner → Settings → Notifications. If "
                "emails still don't arrive, reply with your address and I'll check our delivery "
                "logs for bounces.",
    ),
    dict(
        area="account",
        openings=[
            "How do I change the name on my account?",
            "I got married and need to update my name in Tallyhub.",
            "Can I change my login email address?",
        ],
        answer="Go to Settings → Profile, update your name or email address and click Save. A new "
               "email address must be confirmed through the link we send to it before it becomes "
               "your login; until then the old one keeps working. Your business name on invoices "
               "is separate and lives under Settings → Business profile.",
    ),
]
