require_relative '../../spec_helper'

describe 'backup_agent::install' do
  let(:attributes) { {} }
  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.normal['backup_agent']['install'] = attributes unless attributes.empty?
    end.converge(described_recipe)
  end

  {
    %w(debian 12) => { packages: %w(python3 python3-venv), python: '/usr/bin/python3' },
    %w(ubuntu 24.04) => { packages: %w(python3 python3-venv), python: '/usr/bin/python3' },
    %w(ubuntu 22.04) => { packages: %w(python3.11 python3.11-venv), python: '/usr/bin/python3.11' },
    %w(amazon 2023) => { packages: %w(python3.11), python: '/usr/bin/python3.11' },
    %w(almalinux 9) => { packages: %w(python3.11), python: '/usr/bin/python3.11' },
  }.each do |(platform, version), expected|
    context "on #{platform} #{version}" do
      let(:chef_run) { ChefSpec::SoloRunner.new(platform: platform, version: version).converge(described_recipe) }

      it "installs #{expected[:packages].join(', ')} and makes the venv with #{expected[:python]}" do
        expect(chef_run).to install_package(expected[:packages])
        expect(chef_run).to run_execute('create backup-agent venv').with(
          command: [expected[:python], '-m', 'venv', '/opt/backup-agent'],
          creates: '/opt/backup-agent/bin/pip'
        )
      end
    end
  end

  it 'pins the agent version and uses pip defaults when no source is set' do
    expect(chef_run).to run_execute('install backup-agent').with(
      command: %w(/opt/backup-agent/bin/pip install --disable-pip-version-check --no-input backup-agent==0.1.0)
    )
  end

  context 'with an offline wheelhouse' do
    let(:attributes) do
      { 'version' => '1.2.3', 'no_index' => true, 'find_links' => %w(/srv/wheels /srv/wheelhouse),
        'index_url' => 'https://pypi.example/simple', 'pip_extra_args' => %w(--prefer-binary) }
    end

    it 'passes the pip settings through' do
      expect(chef_run).to run_execute('install backup-agent').with(
        command: %w(/opt/backup-agent/bin/pip install --disable-pip-version-check --no-input
                    --index-url https://pypi.example/simple --no-index
                    --find-links /srv/wheels --find-links /srv/wheelhouse
                    --prefer-binary backup-agent==1.2.3)
      )
    end

    it 'records the version in the marker, and the settings only as a digest' do
      expect(chef_run).to render_file('/opt/backup-agent/.chef-backup-agent-install').with_content { |content|
        expect(content).to start_with("backup-agent==1.2.3\npip-settings-sha256=")
        expect(content).not_to include('pypi.example')
      }
    end
  end

  it 'skips pip when the marker matches the wanted version and settings' do
    allow_any_instance_of(Chef::Resource::Execute).to receive(:backup_agent_installed?).and_return(true)
    expect(chef_run).not_to run_execute('install backup-agent')
  end

  it 'links the agent onto root\'s PATH' do
    expect(chef_run).to create_link('/usr/local/bin/backup-agent').with(to: '/opt/backup-agent/bin/backup-agent')
  end

  context 'with the link in a directory that may not exist yet' do
    let(:attributes) { { 'bin_link' => '/opt/tools/bin/backup-agent' } }

    it 'creates the directory before the link' do
      expect(chef_run).to create_directory('/opt/tools/bin').with(recursive: true)
      expect(chef_run).to create_link('/opt/tools/bin/backup-agent').with(to: '/opt/backup-agent/bin/backup-agent')
    end
  end

  context 'with bin_link false' do
    let(:attributes) { { 'bin_link' => false } }

    it 'makes no link' do
      expect(chef_run.find_resources(:link)).to be_empty
    end
  end
end
