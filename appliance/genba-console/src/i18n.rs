//! English and Japanese. Pages are written in English; [`tr`] gives the Japanese text of a
//! phrase (the phrase itself where no translation is listed).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    /// From a `lang` cookie or query value, else the first fitting `Accept-Language` entry.
    pub fn pick(explicit: Option<&str>, accept_language: Option<&str>) -> Lang {
        if let Some(l) = explicit.and_then(Lang::parse) {
            return l;
        }
        accept_language
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| part.split(';').next())
            .find_map(|tag| Lang::parse(tag.trim()))
            .unwrap_or(Lang::En)
    }

    fn parse(tag: &str) -> Option<Lang> {
        let primary = tag.split('-').next()?.to_ascii_lowercase();
        match primary.as_str() {
            "ja" => Some(Lang::Ja),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::En => Lang::Ja,
            Lang::Ja => Lang::En,
        }
    }
}

/// The phrase in `lang`.
pub fn tr(lang: Lang, en: &'static str) -> &'static str {
    if lang == Lang::En {
        return en;
    }
    match en {
        "Overview" => "概要",
        "Add a thermometer" => "温度計を追加",
        "Add the thermometer" => "温度計を追加する",
        "Add another" => "続けて追加",
        "Not added" => "追加できませんでした",
        "The Pi registers the thermometer, gives it its own device key and makes its config file. You write the file to the board over USB; nothing is compiled." => "Piが温度計を登録し、専用のデバイスキーと設定ファイルを作ります。ファイルをUSBでボードに書き込むだけで、ビルドは不要です。",
        "Device id" => "デバイスID",
        "Wi-Fi network (SSID)" => "Wi-Fiネットワーク（SSID）",
        "Wi-Fi pass phrase (empty for an open network)" => "Wi-Fiパスフレーズ（暗号化なしのネットワークでは空欄）",
        "This Pi's address as the device reaches it (it looks for genba.local first)" => "デバイスから見たこのPiのアドレス（まずgenba.localを探します）",
        "Transport" => "通信方式",
        "MQTT: readings and commands, updates included" => "MQTT：測定値とコマンド（更新を含む）",
        "HTTP: readings only" => "HTTP：測定値のみ",
        "Seconds between readings" => "測定間隔（秒）",
        "More settings" => "詳細設定",
        "DS18B20 data GPIO" => "DS18B20データのGPIO",
        "Status LED GPIO" => "状態LEDのGPIO",
        "The LED lights when its pin is high" => "ピンがHighのときLEDが点灯する",
        "Probe offsets (SENSOR_ID=°C, comma-separated)" => "プローブの補正値（センサーID=°C、カンマ区切り）",
        "Time server (NTP)" => "時刻サーバー（NTP）",
        "Pinned certificate: SHA-256, or none" => "固定する証明書：SHA-256またはnone",
        "Empty: the device pins this Pi's certificate authority and speaks only TLS." => "空欄：このPiの認証局を固定し、TLSだけで通信します。",
        "Empty: an MQTT device pins this Pi's certificate authority and speaks only TLS; an HTTP device speaks plain HTTP, as this Pi serves no HTTPS to devices." => "空欄：MQTTのデバイスはこのPiの認証局を固定し、TLSだけで通信します。このPiはデバイス向けHTTPSを提供していないため、HTTPのデバイスは平文のHTTPで通信します。",
        "Empty: an HTTP device pins this Pi's certificate authority and speaks only HTTPS; an MQTT device speaks plain MQTT, as this Pi serves no MQTT over TLS." => "空欄：HTTPのデバイスはこのPiの認証局を固定し、HTTPSだけで通信します。このPiはMQTT over TLSを提供していないため、MQTTのデバイスは平文のMQTTで通信します。",
        "Empty: this Pi serves no TLS to devices, so the device speaks plain MQTT or HTTP." => "空欄：このPiはデバイス向けTLSを提供していないため、平文のMQTTまたはHTTPで通信します。",
        "A board plugged into this Pi's USB can be written by the Pi itself: plug it in and reload this page." => "このPiのUSBに挿したボードは、Pi自身が書き込めます。挿してからこのページを再読み込みしてください。",
        "Write it to the board plugged into this Pi" => "このPiに挿したボードに書き込む",
        "USB port" => "USBポート",
        "No: I write the file from my computer" => "書き込まない（自分のコンピューターから書き込む）",
        "Only the config: the board runs Genba's firmware already" => "設定だけ：ボードはすでにGenbaのファームウェアで動いている",
        "The board is in its loader already (BOOT held while plugging it in); press RESET afterwards" => "ボードはすでにローダーモード（BOOTを押しながら接続）。書き込み後にRESETを押す",
        "The Pi writes its newest board image with this config inside, checks it and restarts the board. If the write fails, nothing is registered." => "Piが最新のボードイメージにこの設定を入れて書き込み、検証してボードを再起動します。書き込みに失敗したときは何も登録されません。",
        "Written to the board and checked:" => "ボードに書き込み、検証しました：",
        "The secrets went to the board only: no copy of the config file is anywhere. Mount the thermometer; it finds this Pi, logs in with its own key and appears on the Overview with its first reading." => "秘密情報はボードにだけ書き込まれ、設定ファイルの写しはどこにもありません。温度計を設置すると、このPiを見つけて自分のキーでログインし、最初の測定値とともに概要に表示されます。",
        "Thermometer registered" => "温度計を登録しました",
        "Thermometer registered already: it gets a new key" => "登録済みの温度計です：新しいキーを発行しました",
        "Reports to" => "送信先",
        "Pinned certificate" => "固定した証明書",
        "none (plain MQTT or HTTP)" => "なし（平文のMQTTまたはHTTP）",
        "Credential" => "認証情報",
        "device key" => "デバイスキー",
        "revokes it alone" => "でこのキーだけを無効にできます",
        "Download the config file" => "設定ファイルをダウンロード",
        "The file holds the Wi-Fi pass phrase and the device key. This page is its only copy: download it now, and delete it once it is on the board." => "このファイルにはWi-Fiパスフレーズとデバイスキーが含まれます。このページが唯一の控えです。今すぐダウンロードし、ボードに書き込んだら削除してください。",
        "Or step by step" => "または順番に",
        "Write it to the thermometer" => "温度計に書き込む",
        "A new board needs Genba's firmware once, before its config file:" => "新しいボードには、設定ファイルの前に一度だけGenbaのファームウェアを書き込みます：",
        "The image could not be made" => "イメージを作成できませんでした",
        "A new board: one image, one command" => "新しいボード：イメージ1つ、コマンド1つ",
        "Download this board's whole image" => "このボード用のイメージ全体をダウンロード",
        "firmware" => "ファームウェア",
        "this config" => "この設定",
        "Your browser makes it from the Pi's board image and the config file above, so it holds the same secrets. It covers the whole flash: a board that already has data loses it." => "ブラウザがPiのボードイメージと上の設定ファイルから作成するため、同じ秘密情報を含みます。フラッシュ全体を上書きするため、ボード上の既存データは消えます。",
        "Download the board image" => "ボードイメージをダウンロード",
        "Board image" => "ボードイメージ",
        "A new board needs Genba's firmware first:" => "新しいボードには先にGenbaのファームウェアが必要です：",
        "Connect the board over USB and run:" => "ボードをUSBで接続して、次を実行します：",
        "Reset the board. It finds this Pi, logs in with its own key and appears on the Overview with its first reading." => "ボードをリセットします。このPiを見つけて専用のキーでログインし、最初の測定値とともに概要に表示されます。",
        "Devices" => "デバイス",
        "Device" => "デバイス",
        "Alarms" => "アラーム",
        "HACCP record" => "HACCP記録",
        "Delivery" => "配信",
        "Send" => "送信",
        "Firmware" => "ファームウェア",
        "Firmware images" => "ファームウェアイメージ",
        "This Genba" => "このGenba",
        "Running" => "実行中",
        "slot" => "スロット",
        "not the SD-card image (no A/B slots)" => "SDカードイメージではありません（A/Bスロットなし）",
        "Waiting" => "待機中",
        "an uploaded bundle waits to be installed" => "アップロードされたバンドルがインストール待ちです",
        "Last updates" => "最近の更新",
        "Update bundle (.raucb)" => "更新バンドル（.raucb）",
        "Upload and install" => "アップロードしてインストール",
        "The Pi installs a signed bundle into its other root slot, restarts into it, and keeps it once Genba is ready; otherwise it goes back to the slot it ran before. Data and settings stay." => "Piは署名付きバンドルをもう一方のルートスロットにインストールして再起動し、Genbaの準備ができたらそれを使い続けます。そうでなければ元のスロットに戻ります。データと設定は残ります。",
        "Update bundle received: the Pi checks its signature, installs it and restarts to try it." => "更新バンドルを受け取りました。Piが署名を確認してインストールし、再起動して試します。",
        "Update of this Genba" => "このGenbaの更新",
        "Choose the update bundle (.raucb) to upload." => "アップロードする更新バンドル（.raucb）を選んでください。",
        "No firmware images yet. Add one on the appliance:" => {
            "ファームウェアイメージはまだありません。アプライアンスで追加してください:"
        }
        "Version" => "バージョン",
        "Project" => "プロジェクト",
        "Size" => "サイズ",
        "Added" => "追加日時",
        "Devices running it" => "稼働中のデバイス",
        "Download" => "ダウンロード",
        "Update" => "更新",
        "running" => "稼働中",
        "not reported" => "未報告",
        "Update queued for the device." => "更新コマンドを送信キューに入れました。",
        "Last update asked" => "最後の更新依頼",
        "running it" => "適用済み",
        "waiting for its next report" => "次の報告待ち",
        "reported since without it" => "報告あり・未適用",
        "A device installs the image at once, tries it once and keeps it only when its first report after the restart reaches the appliance; otherwise it returns to the version it ran before. The version it reports shows here." => {
            "デバイスはすぐにイメージを書き込み、一度だけ試します。再起動後の最初の報告がアプライアンスに届いたときだけ新しい版を残し、届かなければ以前の版に戻ります。報告された版がここに表示されます。"
        }
        "Send a notification" => "通知を送る",
        "Log in" => "ログイン",
        "Log out" => "ログアウト",
        "User" => "ユーザー",
        "Password" => "パスワード",
        "Wrong user name or password." => "ユーザー名またはパスワードが違います。",
        "Too many attempts; wait a minute." => "試行回数が多すぎます。1分待ってください。",
        "ok" => "正常",
        "alarm" => "アラーム",
        "silent" => "無通信",
        "disabled" => "無効",
        "new" => "新規",
        "last seen" => "最終受信",
        "never" => "なし",
        "ago" => "前",
        "No devices yet. They appear with their first message." => {
            "デバイスはまだありません。最初のメッセージで表示されます。"
        }
        "Connection lost; retrying…" => "接続が切れました。再接続中…",
        "Live" => "ライブ",
        "Name" => "名前",
        "Location" => "場所",
        "Tags" => "タグ",
        "Label" => "ラベル",
        "Unit" => "単位",
        "Save" => "保存",
        "Saved." => "保存しました。",
        "Streams" => "ストリーム",
        "Recent messages" => "最近のメッセージ",
        "Send a command" => "コマンド送信",
        "Command" => "コマンド",
        "Command queued for the device." => "コマンドを送信キューに入れました。",
        "Open alarms" => "未解決のアラーム",
        "Past alarms" => "過去のアラーム",
        "No alarms." => "アラームはありません。",
        "Raised" => "発生",
        "Cleared" => "解除",
        "Acknowledge" => "確認",
        "Acknowledged" => "確認済み",
        "Corrective action" => "是正措置",
        "Corrective action taken (required)" => "実施した是正措置（必須）",
        "by" => "担当",
        "raised" => "発生中",
        "acknowledged" => "確認済み",
        "cleared" => "解除",
        "escalated" => "エスカレーション済み",
        "Value" => "値",
        "Rule" => "ルール",
        "Stream" => "ストリーム",
        "Time" => "時刻",
        "Day" => "日",
        "Month" => "月",
        "Probe" => "プローブ",
        "Check" => "点検",
        "Deviations and corrective actions" => "逸脱と是正措置",
        "No deviations." => "逸脱はありません。",
        "Checked by" => "確認者",
        "Date" => "日付",
        "Signature" => "署名",
        "Download CSV" => "CSVダウンロード",
        "Print" => "印刷",
        "Temperature record" => "温度記録",
        "Sink" => "配信先",
        "Backlog" => "未配信",
        "Delivered" => "配信済み",
        "Parked" => "保留",
        "Last success" => "最終成功",
        "Last error" => "最終エラー",
        "Retry parked" => "保留分を再送",
        "Parked messages" => "保留メッセージ",
        "Reason" => "理由",
        "Topic" => "トピック",
        "Message" => "メッセージ",
        "Sent." => "送信しました。",
        "It will be delivered to" => "配信先",
        "No sink takes this topic; it is stored only." => {
            "このトピックの配信先はありません。保存のみです。"
        }
        "Send another" => "もう一度送る",
        "No login is configured: anyone who reaches this page can use it." => {
            "ログインが設定されていません。このページに届く人は誰でも使えます。"
        }
        "Your role may not do this." => "この操作の権限がありません。",
        "The form expired; please try again." => {
            "フォームの有効期限が切れました。もう一度お試しください。"
        }
        "Not found." => "見つかりません。",
        "24 h" => "24時間",
        "7 d" => "7日",
        "30 d" => "30日",
        "1 y" => "1年",
        "threshold" => "しきい値",
        "No data in this range." => "この期間のデータはありません。",
        "Language" => "言語",
        "Slots" => "点検時刻",
        "min" => "最小",
        "max" => "最大",
        _ => en,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_comes_from_the_choice_then_the_browser() {
        assert_eq!(Lang::pick(None, Some("ja-JP,ja;q=0.9,en;q=0.8")), Lang::Ja);
        assert_eq!(Lang::pick(None, Some("fr-FR,en;q=0.5")), Lang::En);
        assert_eq!(Lang::pick(Some("en"), Some("ja")), Lang::En);
        assert_eq!(Lang::pick(None, None), Lang::En);
        assert_eq!(tr(Lang::Ja, "Alarms"), "アラーム");
        assert_eq!(tr(Lang::En, "Alarms"), "Alarms");
    }
}
